//! `arrowquant serve` as a real process, reached by arrow-flight's Flight SQL client over
//! loopback: statements, prepared statements with parameters, the catalogue, the token, the
//! root, the limits, and a graceful stop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::FlightInfo;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use std::sync::Arc;
use tonic::transport::Channel;

const TOKEN: &str = "a-test-token-of-enough-bytes";

/// A server process, killed when the test ends.
struct Server {
    child: Child,
    flight: String,
    root: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A fresh root holding a copy of the bundled model (as `tiny-unet`), and a directory beside
/// it that clients must not reach.
fn root(name: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("arrowquant-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    let model = root.join("tiny-unet");
    std::fs::create_dir_all(&model).unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models/tiny-unet");
    for entry in std::fs::read_dir(&bundled).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    std::fs::create_dir_all(base.join("outside")).unwrap();
    std::fs::copy(
        bundled.join("diffusion_pytorch_model.safetensors"),
        base.join("outside/model.safetensors"),
    )
    .unwrap();
    root
}

fn start(name: &str, extra: &[&str]) -> Server {
    let root = root(name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_arrowquant"))
        .args([
            "serve",
            "--flight",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--root",
        ])
        .arg(&root)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    // Read on, so the server's later lines have somewhere to go.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let flight = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc://"))
        .unwrap_or_else(|| panic!("no Flight address in {line:?}"))
        .trim_end_matches(',')
        .to_string();
    Server {
        child,
        flight,
        root: root.parent().unwrap().to_path_buf(),
    }
}

async fn client(server: &Server) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.flight))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, String> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("a ticket");
        let stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
        let mut got: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
        batches.append(&mut got);
    }
    Ok(batches)
}

async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    fetch(client, info).await
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_statements_and_the_catalogue() {
    let server = start("sql", &[]);
    let mut client = client(&server).await;

    // Every tensor row of the bundled model, quantized by the server.
    let batches = query(
        &mut client,
        "SELECT layer, quantize(weights, 4)['scheme'] AS scheme FROM read_safetensors('tiny-unet')",
    )
    .await
    .unwrap();
    let expected = query(
        &mut client,
        "SELECT count(*) AS n FROM read_safetensors('tiny-unet')",
    )
    .await
    .unwrap();
    let n = expected[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert!(n > 10, "{n} rows");
    assert_eq!(rows(&batches) as i64, n);
    assert_eq!(batches[0].schema().field(1).data_type(), &DataType::Utf8);

    // A prepared statement with a parameter, bound twice.
    let mut prepared = client
        .prepare(
            "SELECT count(*) AS n FROM read_safetensors('tiny-unet') WHERE layer LIKE $1".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 1);
    for (pattern, at_least) in [("conv_in%", 2_i64), ("%", n)] {
        let parameters = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, false)])),
            vec![Arc::new(arrow::array::StringArray::from(vec![pattern]))],
        )
        .unwrap();
        prepared.set_parameters(parameters).unwrap();
        let info = prepared.execute().await.unwrap();
        let got = fetch(&mut client, info).await.unwrap();
        let count = got[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0);
        assert!(count >= at_least && count <= n, "{pattern}: {count}");
        if pattern == "%" {
            assert_eq!(count, n);
        }
    }
    prepared.close().await.unwrap();

    // DDL inside the root; the catalogue lists the table, SELECT reads it.
    query(&mut client, "COPY (SELECT 7 AS a) TO 'seven.parquet'")
        .await
        .unwrap();
    assert!(server.root.join("root/seven.parquet").exists());
    query(
        &mut client,
        "CREATE EXTERNAL TABLE seven STORED AS PARQUET LOCATION 'seven.parquet'",
    )
    .await
    .unwrap();
    let got = query(&mut client, "SELECT a FROM seven").await.unwrap();
    assert_eq!(
        got[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        7
    );
    let info = client
        .get_tables(CommandGetTables {
            include_schema: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let tables = fetch(&mut client, info).await.unwrap();
    let names: Vec<String> = tables
        .iter()
        .flat_map(|b| {
            let names = b
                .column_by_name("table_name")
                .unwrap()
                .as_string::<i32>()
                .clone();
            (0..names.len()).map(move |i| names.value(i).to_string())
        })
        .collect();
    assert!(names.contains(&"seven".to_string()), "{names:?}");
    let info = client.get_catalogs().await.unwrap();
    let catalogs = fetch(&mut client, info).await.unwrap();
    assert!(rows(&catalogs) >= 1);
    let info = client.get_sql_info(vec![]).await.unwrap();
    assert!(rows(&fetch(&mut client, info).await.unwrap()) > 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_root_and_settings_are_refused_by_name() {
    let server = start("refusals", &[]);
    std::os::unix::fs::symlink(
        server.root.join("outside"),
        server.root.join("root/link-out"),
    )
    .unwrap();
    let mut client = client(&server).await;
    let outside = server.root.join("outside/model.safetensors");
    let absolute = format!(
        "SELECT count(*) FROM read_safetensors('{}')",
        outside.display()
    );
    for (sql, says) in [
        (
            "SELECT count(*) FROM read_safetensors('../outside/model.safetensors')",
            "read_safetensors path '../outside/model.safetensors'",
        ),
        (absolute.as_str(), "read_safetensors path"),
        (
            "SELECT count(*) FROM safetensors_info('link-out/model.safetensors')",
            "safetensors_info path 'link-out/model.safetensors'",
        ),
        (
            "COPY (SELECT 1 AS a) TO '../outside/x.parquet'",
            "COPY TO '../outside/x.parquet'",
        ),
        (
            "COPY (SELECT 1 AS a) TO 'link-out/x.parquet'",
            "COPY TO 'link-out/x.parquet'",
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '../outside/'",
            "LOCATION '../outside/'",
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://bucket/x/'",
            "not a local path",
        ),
    ] {
        let e = query(&mut client, sql).await.unwrap_err();
        assert!(e.contains(says), "{sql}: {e}");
        assert!(e.contains("under the server's root"), "{sql}: {e}");
        assert!(
            e.contains("PermissionDenied") || e.contains("permission"),
            "{sql}: {e}"
        );
    }
    assert!(!server.root.join("outside/x.parquet").exists());
    let e = query(&mut client, "SET datafusion.execution.batch_size = 1")
        .await
        .unwrap_err();
    assert!(
        e.contains("Statement not supported") || e.contains("SET"),
        "{e}"
    );
    let e = query(&mut client, "SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert!(e.contains("no_such_table"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_the_time_memory_or_size_limit_fails_and_the_server_serves_on() {
    let server = start(
        "limits",
        &[
            "--query-timeout",
            "2",
            "--memory-limit",
            "32MiB",
            "--max-request-size",
            "64KiB",
        ],
    );
    let mut client = client(&server).await;
    let started = std::time::Instant::now();
    let e = query(
        &mut client,
        "SELECT count(*) FROM generate_series(1, 100000000000) AS t(v) WHERE v % 7 = 3",
    )
    .await
    .unwrap_err();
    assert!(e.contains("--query-timeout"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // A sort of 40 M values needs more than 32 MiB and may not spill.
    let e = query(
        &mut client,
        "SELECT v FROM generate_series(1, 40000000) AS t(v) ORDER BY v DESC LIMIT 100000000",
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("Resources exhausted") || e.contains("memory"),
        "{e}"
    );
    // A request past --max-request-size (here 64 KiB): a parameter of 100 KB.
    let mut prepared = client
        .prepare("SELECT length($1) AS n".into(), None)
        .await
        .unwrap();
    let big = "x".repeat(100_000);
    let parameters = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, false)])),
        vec![Arc::new(arrow::array::StringArray::from(vec![
            big.as_str(),
        ]))],
    )
    .unwrap();
    prepared.set_parameters(parameters).unwrap();
    let e = prepared.execute().await.unwrap_err().to_string();
    assert!(
        e.contains("message length too large") || e.contains("too large"),
        "{e}"
    );
    let got = query(&mut client, "SELECT 40 + 2 AS x").await.unwrap();
    let x = got[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(x, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_call_needs_it() {
    let base =
        std::env::temp_dir().join(format!("arrowquant-serve-tokenfile-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let token_file = base.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = start(
        "token",
        &["--auth-token-file", token_file.to_str().unwrap()],
    );
    let mut client = client(&server).await;
    let e = query(&mut client, "SELECT 1").await.unwrap_err();
    assert!(e.contains("no token"), "{e}");
    client.set_token("not-the-token-but-long-enough".into());
    let e = query(&mut client, "SELECT 1").await.unwrap_err();
    assert!(e.contains("wrong token"), "{e}");
    client.clear_token();
    let e = client
        .handshake("user", "wrong-password-here")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("wrong token"), "{e}");
    // The handshake hands back the bearer token, which the client then sends.
    client.handshake("user", TOKEN).await.unwrap();
    assert_eq!(client.token().map(String::as_str), Some(TOKEN));
    assert_eq!(rows(&query(&mut client, "SELECT 1").await.unwrap()), 1);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn without_a_token_only_loopback_and_sigterm_stops_it_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_arrowquant"))
        .args(["serve", "--flight", "0.0.0.0:0", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--flight 0.0.0.0:0") && stderr.contains("loopback"),
        "{stderr}"
    );

    let mut server = start("sigterm", &[]);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&server.child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
