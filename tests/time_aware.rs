//! Time-aware activation quantization end to end: `quantize --calibration` on the bundled UNet
//! and its recorded DDPM activations, examples/sql/time_aware.sql's measurements, and every
//! bad calibration input refused with one clear line.

mod common;

use std::path::Path;

use common::{
    arrowquant, assert_fails_with, bundled_calibration, bundled_model, command, scratch, stderr,
    stdout,
};

fn no_partial_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".partial-"), "left behind: {name}");
    }
}

/// Rows of a query's CSV output (header dropped).
fn sql_rows(dir: &Path, sql: &str) -> Vec<Vec<String>> {
    let o = arrowquant(&["sql", "-q", "--format", "csv", "-c", sql], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn calibration_writes_activation_params_and_measures_them() {
    let dir = scratch("time-aware-run");
    let calibration = bundled_calibration();
    let model = bundled_model();
    let o = arrowquant(
        &[
            "quantize",
            model.to_str().unwrap(),
            "-o",
            "out",
            "--quiet",
            "--calibration",
            calibration.to_str().unwrap(),
            "--timestep-groups",
            "10",
            "--smoothing",
            "linear",
            "--optimize",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("activations: 76 layers x 10 uniform groups at 8 bits from 7600 records"),
        "{text}"
    );
    assert!(text.contains("markov violations: "), "{text}");

    // One row per (layer, group), groups covering the schedule without gaps.
    let rows = sql_rows(
        &dir,
        "SELECT count(*), count(DISTINCT layer), min(\"group\"), max(\"group\"), min(first_timestep), max(last_timestep), min(scale) > 0, min(bits), max(bits) FROM 'out/activation_params.parquet'",
    );
    assert_eq!(
        rows[0],
        ["760", "76", "0", "9", "0", "990", "true", "8", "8"]
    );
    let gaps = sql_rows(
        &dir,
        "SELECT count(*) FROM (SELECT first_timestep - lag(last_timestep) OVER (PARTITION BY layer ORDER BY \"group\") AS gap FROM 'out/activation_params.parquet') WHERE gap <> 10",
    );
    assert_eq!(gaps[0], ["0"]);
    // The smoothed schedule: every recorded timestep of every layer.
    let schedule = sql_rows(
        &dir,
        "SELECT count(*), min(scale) > 0 FROM 'out/activation_schedule.parquet'",
    );
    assert_eq!(schedule[0], ["7600", "true"]);

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/manifest.json")).unwrap())
            .unwrap();
    let a = &manifest["summary"]["activations"];
    let f = |k: &str| a[k].as_f64().unwrap();
    assert!(f("mse_before") < f("static_mse"), "{a}");
    assert!(
        f("markov_violations_after") <= f("markov_violations_before"),
        "{a}"
    );
    assert_eq!(manifest["config"]["smoothing"], "linear");
    assert!(
        manifest["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "activation_params.parquet")
    );
}

#[test]
fn adaptive_grouping_from_yaml() {
    let dir = scratch("time-aware-yaml");
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "calibration: {}\ngrouping: adaptive\ntimestep_groups: 5\nactivation_bits: 4\n",
            bundled_calibration().display()
        ),
    )
    .unwrap();
    let model = bundled_model();
    let o = arrowquant(
        &[
            "quantize",
            model.to_str().unwrap(),
            "-o",
            "out",
            "-q",
            "--config",
            "config.yaml",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("76 layers x 5 adaptive groups at 4 bits"),
        "{}",
        stdout(&o)
    );
    // Adaptive groups follow each layer's data: their boundaries differ between layers.
    let rows = sql_rows(
        &dir,
        "SELECT count(*), count(DISTINCT first_timestep), min(bits) FROM 'out/activation_params.parquet'",
    );
    assert_eq!(rows[0][0], "380");
    assert!(rows[0][1].parse::<i64>().unwrap() > 5, "{rows:?}");
    assert_eq!(rows[0][2], "4");
}

/// Runs examples/sql/time_aware.sql and checks what the issue asks of its figures.
#[test]
fn time_aware_sql_measures_the_four_settings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = arrowquant(
        &[
            "sql",
            "-q",
            "--format",
            "csv",
            "-f",
            "examples/sql/time_aware.sql",
        ],
        root,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    println!("{text}");
    let mut mse = std::collections::HashMap::new();
    let mut violations = std::collections::HashMap::new();
    let mut objectives = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() == 4 && cells[0].starts_with('(') {
            let key = (cells[0].to_string(), cells[1].to_string());
            mse.insert(key.clone(), cells[2].parse::<f64>().unwrap());
            violations.insert(key, cells[3].parse::<i64>().unwrap());
        } else if cells.len() == 3 && (cells[0] == "8" || cells[0] == "4") {
            objectives.push((
                cells[1].parse::<f64>().unwrap(),
                cells[2].parse::<f64>().unwrap(),
            ));
        }
    }
    for bits in ["8", "4"] {
        let m = |s: &str| mse[&(s.to_string(), bits.to_string())];
        let v = |s: &str| violations[&(s.to_string(), bits.to_string())];
        // (b) beats (a) by at least 3 %, both ways of grouping.
        assert!(
            m("(b) uniform groups") < 0.97 * m("(a) static"),
            "{bits} bits"
        );
        assert!(
            m("(b) adaptive groups") < 0.97 * m("(a) static"),
            "{bits} bits"
        );
        // (c) and (d) have no more Markov violations than (b).
        assert!(v("(c) + smoothing") <= v("(b) uniform groups"));
        assert!(v("(d) + optimisation") <= v("(b) uniform groups"));
    }
    // (d) has the lowest value of its own objective.
    assert_eq!(objectives.len(), 2, "{text}");
    for (per_group, optimized) in objectives {
        assert!(optimized <= per_group, "{optimized} > {per_group}");
    }
}

/// Writes a calibration Parquet file with a query of the SQL shell.
fn calibration_file(dir: &Path, name: &str, select: &str) -> String {
    let path = dir.join(name);
    let sql = format!("COPY ({select}) TO '{}' STORED AS PARQUET", path.display());
    let o = arrowquant(&["sql", "-q", "-c", &sql], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    path.display().to_string()
}

fn refused(dir: &Path, extra: &[&str], needle: &str) {
    let model = bundled_model();
    let mut args = vec!["quantize", model.to_str().unwrap(), "-o", "out", "-q"];
    args.extend_from_slice(extra);
    let o = arrowquant(&args, dir);
    assert_fails_with(&o, needle);
    assert!(!dir.join("out").exists());
    no_partial_dirs(dir);
}

#[test]
fn bad_calibration_inputs_are_refused_clearly() {
    let dir = scratch("time-aware-bad");
    let good = bundled_calibration().display().to_string();
    let records = |t: &str, v: &str| {
        format!(
            "SELECT 'conv_in' AS layer, CAST({t} AS INT) AS timestep, {v} AS \"values\" FROM generate_series(0, 19) AS s(i)"
        )
    };

    let late = calibration_file(&dir, "late.parquet", &records("i * 50 + 50", "[1.0, 2.0]"));
    refused(
        &dir,
        &["--calibration", &late],
        "layer 'conv_in': timestep 1000 is outside [0, 1000) (num_timesteps = 1000)",
    );
    let negative = calibration_file(&dir, "negative.parquet", &records("i - 1", "[1.0, 2.0]"));
    refused(
        &dir,
        &["--calibration", &negative],
        "timestep -1 is outside [0, 1000)",
    );
    let nan = calibration_file(
        &dir,
        "nan.parquet",
        &records(
            "i * 10",
            "CASE WHEN i = 7 THEN [1.0, 'NaN'::double] ELSE [1.0, 2.0] END",
        ),
    );
    refused(
        &dir,
        &["--calibration", &nan],
        "layer 'conv_in' timestep 70: NaN, infinite or NULL activation values",
    );
    let few = calibration_file(&dir, "few.parquet", &records("i", "[1.0, 2.0]"));
    refused(
        &dir,
        &[
            "--calibration",
            &few,
            "--timestep-groups",
            "25",
            "--grouping",
            "adaptive",
        ],
        "layer 'conv_in' has 20 recorded timesteps, fewer than timestep_groups = 25",
    );
    refused(
        &dir,
        &["--calibration", &few, "--timestep-groups", "10"],
        "layer 'conv_in': only 1 of 10 uniform timestep groups hold recorded timesteps",
    );
    let no_values = calibration_file(
        &dir,
        "no-values.parquet",
        "SELECT 'a' AS layer, 1 AS timestep, [1.0] AS acts",
    );
    refused(&dir, &["--calibration", &no_values], "no column 'values'");
    let text_values = calibration_file(
        &dir,
        "text-values.parquet",
        "SELECT 'a' AS layer, 1 AS timestep, 'x' AS \"values\"",
    );
    refused(&dir, &["--calibration", &text_values], "values Utf8");
    refused(
        &dir,
        &["--calibration", "missing.parquet"],
        "calibration missing.parquet: no such file",
    );
    std::fs::write(dir.join("text.parquet"), "not parquet").unwrap();
    refused(
        &dir,
        &["--calibration", "text.parquet"],
        "not a readable Parquet file",
    );
    // A FIFO is refused by its type, never opened (opening it would wait for a writer).
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        dir.join("pipe.parquet"),
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )
    .unwrap();
    refused(
        &dir,
        &["--calibration", "pipe.parquet"],
        "calibration pipe.parquet: not a regular file (a FIFO)",
    );
    std::fs::create_dir(dir.join("folder.parquet")).unwrap();
    refused(
        &dir,
        &["--calibration", "folder.parquet"],
        "calibration folder.parquet: not a regular file (a directory)",
    );

    // Configuration values, by flag, YAML and environment.
    refused(
        &dir,
        &["--calibration", &good, "--grouping", "spline"],
        "key 'grouping': unknown value 'spline' (expected uniform, log, adaptive)",
    );
    refused(
        &dir,
        &["--calibration", &good, "--smoothing", "bezier"],
        "key 'smoothing': unknown value 'bezier' (expected none, linear, cubic, sigmoid)",
    );
    refused(
        &dir,
        &["--calibration", &good, "--timestep-groups", "0"],
        "key 'timestep_groups'",
    );
    refused(
        &dir,
        &["--calibration", &good, "--timestep-groups", "1001"],
        "1001 groups for a schedule of 1000 timesteps",
    );
    refused(
        &dir,
        &["--calibration", &good, "--activation-bits", "9"],
        "key 'activation_bits'",
    );
    std::fs::write(dir.join("bad.yaml"), "lambda_entropy: -0.5\n").unwrap();
    refused(
        &dir,
        &["--calibration", &good, "--config", "bad.yaml"],
        "bad.yaml: key 'lambda_entropy': -0.5 is not a number ≥ 0",
    );
    let model = bundled_model();
    let o = command(
        &[
            "quantize",
            model.to_str().unwrap(),
            "-o",
            "out",
            "-q",
            "--calibration",
            &good,
        ],
        &dir,
    )
    .env("ARROW_QUANT_LAMBDA_MARKOV", "-1")
    .output()
    .unwrap();
    assert_fails_with(
        &o,
        "environment: key 'lambda_markov': -1 is not a number ≥ 0",
    );
    assert!(!dir.join("out").exists());
}

/// A calibration layer the model does not have is an error naming it and the nearest model
/// layers: its ranges would be written for nothing and the real layer would get none.
#[test]
fn calibration_layers_must_be_model_layers() {
    let dir = scratch("time-aware-layers");
    let records = |layer: &str| {
        format!(
            "SELECT '{layer}' AS layer, CAST(i * 50 AS INT) AS timestep, [1.0, 2.0 + i] AS \"values\" \
             FROM generate_series(0, 19) AS s(i)"
        )
    };
    let typo = calibration_file(
        &dir,
        "typo.parquet",
        &format!("{} UNION ALL {}", records("conv_in"), records("conv_inn")),
    );
    refused(
        &dir,
        &["--calibration", &typo],
        "layer 'conv_inn' matches no layer of the model; nearest model layers: 'conv_in', ",
    );
    let none = calibration_file(
        &dir,
        "none.parquet",
        &format!(
            "{} UNION ALL {}",
            records("text_encoder.layer.0"),
            records("vae.decoder.conv")
        ),
    );
    refused(
        &dir,
        &["--calibration", &none],
        "matches no layer of the model (nor does the other calibration layer)",
    );
    let null = calibration_file(
        &dir,
        "null.parquet",
        &format!(
            "{} UNION ALL SELECT CAST(NULL AS VARCHAR), 5, [1.0]",
            records("conv_in")
        ),
    );
    refused(
        &dir,
        &["--calibration", &null],
        "a record has no layer (NULL)",
    );
}

/// Several records of one (layer, timestep) are samples of the same step: doubling every
/// record changes neither the groups nor the ranges nor the Markov checks.
#[test]
fn repeated_records_of_a_timestep_are_samples() {
    let dir = scratch("time-aware-repeated");
    let good = bundled_calibration().display().to_string();
    let doubled = calibration_file(
        &dir,
        "doubled.parquet",
        &format!("SELECT * FROM '{good}' UNION ALL SELECT * FROM '{good}'"),
    );
    let model = bundled_model();
    let run = |calibration: &str, out: &str| {
        let o = arrowquant(
            &[
                "quantize",
                model.to_str().unwrap(),
                "-o",
                out,
                "-q",
                "--calibration",
                calibration,
                "--grouping",
                "adaptive",
                "--smoothing",
                "linear",
            ],
            &dir,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(out).join("manifest.json")).unwrap(),
        )
        .unwrap();
        manifest["summary"]["activations"].clone()
    };
    let once = run(&good, "once");
    let twice = run(&doubled, "twice");
    assert_eq!(twice["records"], 2 * once["records"].as_u64().unwrap());
    for key in [
        "layers",
        "groups",
        "markov_violations_before",
        "markov_violations_after",
    ] {
        assert_eq!(once[key], twice[key], "{key}");
    }
    let params = |out: &str| {
        sql_rows(
            &dir,
            &format!(
                "SELECT layer, \"group\", first_timestep, last_timestep FROM '{out}/activation_params.parquet' ORDER BY layer, \"group\""
            ),
        )
    };
    assert_eq!(params("once"), params("twice"));
    let schedule = |out: &str| {
        sql_rows(
            &dir,
            &format!(
                "SELECT count(*), count(DISTINCT layer || '/' || CAST(timestep AS VARCHAR)) FROM '{out}/activation_schedule.parquet'"
            ),
        )
    };
    assert_eq!(schedule("twice"), schedule("once"));
    assert_eq!(schedule("once")[0][0], schedule("once")[0][1]);
}

/// A layer whose activations are all equal has a range of zero width: it gets a small
/// positive scale (the offset alone reproduces the value) instead of failing the run.
#[test]
fn a_constant_layer_gets_a_minimal_scale() {
    let dir = scratch("time-aware-constant");
    let constant = calibration_file(
        &dir,
        "constant.parquet",
        "SELECT 'conv_in' AS layer, CAST(i * 50 AS INT) AS timestep, [3.0, 3.0, 3.0] AS \"values\" \
         FROM generate_series(0, 19) AS s(i)",
    );
    let model = bundled_model();
    for extra in [&[][..], &["--optimize", "--smoothing", "cubic"][..]] {
        let mut args = vec![
            "quantize",
            model.to_str().unwrap(),
            "-o",
            "out",
            "-q",
            "--force",
            "--calibration",
            &constant,
        ];
        args.extend_from_slice(extra);
        let o = arrowquant(&args, &dir);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let rows = sql_rows(
            &dir,
            "SELECT min(scale) > 0, max(scale) <= 3.0 / 1024, min(\"offset\"), max(\"offset\") FROM 'out/activation_params.parquet'",
        );
        assert_eq!(rows[0], ["true", "true", "3.0", "3.0"], "{extra:?}");
    }
}
