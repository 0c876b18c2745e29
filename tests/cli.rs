//! The `arrowquant` binary, run as a real subprocess.

use std::path::Path;
use std::process::Command;

fn arrowquant() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arrowquant"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn readme_function_table_is_the_catalogue() {
    let out = arrowquant().arg("functions").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&table),
        "README.md's function table is out of date: paste `arrowquant functions` into it"
    );
}

#[test]
fn sql_command_runs_and_prints_csv() {
    let out = arrowquant()
        .args(["sql", "--quiet", "--format", "csv", "-c"])
        .arg("SELECT quantize([0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15], 4, 16, 'asym_minmax')['len'] AS n")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n16");
}

#[test]
fn sql_file_runs_the_quickstart() {
    let out = arrowquant()
        .args(["sql", "--quiet", "-f", "examples/sql/quickstart.sql"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mid.attn.to_q.weight"), "{stdout}");
}

#[test]
fn parquet_files_are_queryable_by_path() {
    let out = arrowquant()
        .args(["sql", "--quiet", "--format", "json", "-c"])
        .arg("SELECT count(*) AS n FROM 'examples/data/weights.parquet'")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"[{"n":1126}]"#
    );
}

#[test]
fn a_failing_statement_exits_non_zero_with_one_clear_line() {
    let out = arrowquant()
        .args(["sql", "-q", "-c", "SELECT quantize([1.0], 7)"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("quantize: argument 'bits': unsupported bit width 7"),
        "{stderr}"
    );
}

#[test]
fn a_missing_sql_file_is_an_error_not_a_panic() {
    let out = arrowquant()
        .args(["sql", "-f", "no/such/file.sql"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read SQL file no/such/file.sql"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
