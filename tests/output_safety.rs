//! Outputs never destroy data: `--force` replaces only a previous arrowquant output, no output
//! is or holds an input (through symbolic links, hard links, shards and components), two runs
//! to one output never silently overwrite each other, a signal leaves no partial behind and a
//! killed run's partial is cleaned up by the next. Every run has a timeout: a hang (a FIFO
//! opened for reading) fails the test instead of blocking it.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The binary run with a timeout.
fn run(args: &[&str], cwd: &Path) -> Output {
    let child = command(args, cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    finish(child, &format!("{args:?}"))
}

/// Waits for a child (reading its output as it comes, so a full pipe cannot stall it), killing
/// it and failing after a minute.
fn finish(mut child: Child, what: &str) -> Output {
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = r.read_to_end(&mut buffer);
            buffer
        })
    };
    let out = child.stdout.take().map(|s| drain(Box::new(s)));
    let err = child.stderr.take().map(|s| drain(Box::new(s)));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("arrowquant {what} hung for a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap()).unwrap_or_default()
    };
    Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    }
}

fn small_model(path: &Path) {
    write_safetensors(
        path,
        &[
            Tensor::f32("a.weight", &[32, 64], &values(32 * 64, 1)),
            Tensor::f32("b.weight", &[16, 64], &values(16 * 64, 2)),
            Tensor::f32("b.bias", &[16], &values(16, 3)),
        ],
    );
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Names in `dir` that look like partials or moved-aside outputs.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-") || n.contains(".replaced-"))
        .collect()
}

fn succeeded(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

fn victim(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
}

fn precious(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("precious.txt")).unwrap()
}

#[test]
fn force_never_deletes_a_directory_arrowquant_did_not_write() {
    let dir = scratch("force-victim");
    small_model(&dir.join("m/model.safetensors"));
    victim(&dir.join("victim"));
    let o = run(&["quantize", "m", "-o", "victim", "--force", "-q"], &dir);
    assert_fails_with(
        &o,
        "output victim is a directory without manifest.json; --force replaces only a previous \
         arrowquant output directory",
    );
    assert_eq!(precious(&dir.join("victim")), "keep me");
    // Without --force the refusal says that --force would not help either.
    let o = run(&["quantize", "m", "-o", "victim", "-q"], &dir);
    assert_fails_with(
        &o,
        "output victim already exists and is a directory without manifest.json: choose another \
         path",
    );

    // A copied manifest does not make a folder of other files an output.
    succeeded(&run(&["quantize", "m", "-o", "out", "-q"], &dir));
    std::fs::copy(
        dir.join("out/manifest.json"),
        dir.join("victim/manifest.json"),
    )
    .unwrap();
    let o = run(&["quantize", "m", "-o", "victim", "--force", "-q"], &dir);
    assert_fails_with(
        &o,
        "output victim holds precious.txt, which is not a file arrowquant wrote there",
    );
    assert_eq!(precious(&dir.join("victim")), "keep me");
    // Nor is a file dropped into a previous output replaced with it.
    std::fs::write(dir.join("out/notes.txt"), "mine").unwrap();
    let o = run(&["quantize", "m", "-o", "out", "--force", "-q"], &dir);
    assert_fails_with(&o, "output out holds notes.txt");
    assert_eq!(
        std::fs::read_to_string(dir.join("out/notes.txt")).unwrap(),
        "mine"
    );
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn force_never_replaces_a_fifo_a_file_or_a_link() {
    let dir = scratch("force-fifo");
    small_model(&dir.join("m/model.safetensors"));
    mkfifo(&dir.join("fifo"));
    let o = run(&["quantize", "m", "-o", "fifo", "--force", "-q"], &dir);
    assert_fails_with(&o, "output fifo is a FIFO; --force replaces only");
    assert!(is_fifo(&dir.join("fifo")));
    std::fs::write(dir.join("file"), "data").unwrap();
    let o = run(&["quantize", "m", "-o", "file", "--force", "-q"], &dir);
    assert_fails_with(&o, "output file is a regular file; --force replaces only");
    assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "data");
    let o = run(&["quantize", "m", "-o", "file", "-q"], &dir);
    assert_fails_with(
        &o,
        "output file already exists and is a regular file: choose another path",
    );
    // A link to a previous output is not replaced either (nor is what it points to).
    succeeded(&run(&["quantize", "m", "-o", "out", "-q"], &dir));
    std::os::unix::fs::symlink("out", dir.join("link")).unwrap();
    let o = run(&["quantize", "m", "-o", "link", "--force", "-q"], &dir);
    assert_fails_with(&o, "output link is a symbolic link");
    assert!(dir.join("out/manifest.json").is_file());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn force_replaces_a_previous_output() {
    let dir = scratch("force-previous");
    small_model(&dir.join("m/model.safetensors"));
    succeeded(&run(&["quantize", "m", "-o", "out", "-q"], &dir));
    let o = run(
        &["quantize", "m", "-o", "out", "--force", "--bits", "8", "-q"],
        &dir,
    );
    succeeded(&o);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["config"]["bit_width"], 8);
    assert_eq!(manifest["format"], "arrowquant-1");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

/// A Hugging Face cache: the snapshot's files are links into `blobs`.
fn hf_cache(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("hub/models--org--tiny");
    small_model(&repo.join("blobs/5f3a9e"));
    std::fs::write(repo.join("blobs/c0ffee"), r#"{"model_type": "llama"}"#).unwrap();
    let snapshot = repo.join("snapshots/0123abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::os::unix::fs::symlink("../../blobs/5f3a9e", snapshot.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("../../blobs/c0ffee", snapshot.join("config.json")).unwrap();
    snapshot
}

#[test]
fn outputs_over_a_snapshots_linked_blobs_are_refused() {
    let dir = scratch("hf-snapshot");
    let snapshot = hf_cache(&dir);
    let model = snapshot.to_str().unwrap();
    let before = snapshot_of(&dir.join("hub"));
    for out in [
        "hub/models--org--tiny/blobs",
        "hub/models--org--tiny",
        "hub/models--org--tiny/snapshots",
        "hub/models--org--tiny/snapshots/0123abc",
        "hub",
    ] {
        for force in [true, false] {
            let mut args = vec!["quantize", model, "-o", out, "-q"];
            if force {
                args.push("--force");
            }
            let o = run(&args, &dir);
            assert_fails_with(&o, &format!("output {out} would replace the input model"));
        }
    }
    // Through an absolute path and a trailing slash too.
    let blobs = dir.join("hub/models--org--tiny/blobs/");
    let o = run(
        &["quantize", model, "-o", blobs.to_str().unwrap(), "--force"],
        &dir,
    );
    assert_fails_with(&o, "would replace the input model: it holds the input file");
    assert_eq!(snapshot_of(&dir.join("hub")), before, "input changed");
    // Beside it is fine.
    succeeded(&run(&["quantize", model, "-o", "out", "-q"], &dir));
}

/// Every entry under a directory, links as links, with file contents.
fn snapshot_of(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d).unwrap();
        if meta.is_symlink() {
            out.push((
                d.clone(),
                std::fs::read_link(&d).unwrap().display().to_string(),
            ));
        } else if meta.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            out.push((d.clone(), format!("{:?}", std::fs::read(&d).unwrap())));
        }
    }
    out.sort();
    out
}

#[test]
fn a_component_folder_reached_through_a_link_is_an_input() {
    let dir = scratch("component-link");
    small_model(&dir.join("store/unet/diffusion_pytorch_model.safetensors"));
    std::fs::create_dir_all(dir.join("p")).unwrap();
    std::fs::write(
        dir.join("p/model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DModel"]}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink("../store/unet", dir.join("p/unet")).unwrap();
    let before = snapshot_of(&dir.join("store"));
    for out in ["p/unet", "store", "store/unet", "p"] {
        let o = run(&["quantize", "p", "-o", out, "--force", "-q"], &dir);
        assert_fails_with(&o, &format!("output {out} would replace the input model"));
    }
    assert_eq!(snapshot_of(&dir.join("store")), before);
    succeeded(&run(&["quantize", "p", "-o", "out", "-q"], &dir));
}

#[test]
fn two_runs_to_one_output_exactly_one_wins() {
    let dir = scratch("concurrent");
    small_model(&dir.join("m/model.safetensors"));
    let spawn = || {
        command(&["quantize", "m", "-o", "same/out", "-q"], &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outputs = [finish(a, "first"), finish(b, "second")];
    let won: Vec<&Output> = outputs.iter().filter(|o| o.status.success()).collect();
    let lost: Vec<&Output> = outputs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(won.len(), 1, "exactly one run succeeds");
    let e = stderr(lost[0]);
    assert!(
        e.contains("already exists (use --force") || e.contains("appeared while this run"),
        "{e}"
    );
    assert_eq!(lost[0].status.code(), Some(1));
    assert!(dir.join("same/out/manifest.json").is_file());
    assert!(leftovers(&dir.join("same")).is_empty());
}

#[test]
fn dequantize_never_writes_over_its_input() {
    let dir = scratch("dequantize-input");
    small_model(&dir.join("m/model.safetensors"));
    succeeded(&run(&["quantize", "m", "-o", "out", "-q"], &dir));
    let before = snapshot_of(&dir.join("out"));
    std::fs::hard_link(
        dir.join("out/weights.parquet"),
        dir.join("hard.safetensors"),
    )
    .unwrap();
    std::os::unix::fs::symlink("out/report.parquet", dir.join("soft.safetensors")).unwrap();
    for (output, how) in [
        (
            "out/weights.parquet",
            "it is the input file out/weights.parquet",
        ),
        (
            "out/manifest.json",
            "it is the input file out/manifest.json",
        ),
        ("out", "it holds the input file"),
        ("out/", "it holds the input file"),
        (".", "it holds the input file"),
        (
            "hard.safetensors",
            "it is the input file out/weights.parquet",
        ),
        (
            "soft.safetensors",
            "it is the input file out/report.parquet",
        ),
    ] {
        for force in [true, false] {
            let mut args = vec!["dequantize", "out", "-o", output];
            if force {
                args.push("--force");
            }
            let o = run(&args, &dir);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{output}: {e}");
            assert!(
                e.contains("would replace the input quantized model") && e.contains(how)
                    || output.ends_with('/') && e.contains("a file name is expected")
                    || output == "." && e.contains("names no file"),
                "{output}: {e}"
            );
        }
    }
    assert_eq!(snapshot_of(&dir.join("out")), before, "input changed");

    // Not a regular file: refused, untouched.
    mkfifo(&dir.join("fifo"));
    let o = run(&["dequantize", "out", "-o", "fifo", "--force"], &dir);
    assert_fails_with(
        &o,
        "output fifo is a FIFO; --force replaces only a regular file",
    );
    assert!(is_fifo(&dir.join("fifo")));
    victim(&dir.join("folder"));
    let o = run(&["dequantize", "out", "-o", "folder", "--force"], &dir);
    assert_fails_with(&o, "output folder is a directory");
    assert_eq!(precious(&dir.join("folder")), "keep me");
    // A regular file is replaced with --force, and only then.
    std::fs::write(dir.join("old.safetensors"), "old").unwrap();
    let o = run(&["dequantize", "out", "-o", "old.safetensors"], &dir);
    assert_fails_with(&o, "already exists (use --force to replace it)");
    succeeded(&run(
        &["dequantize", "out", "-o", "old.safetensors", "--force"],
        &dir,
    ));
    assert!(
        std::fs::metadata(dir.join("old.safetensors"))
            .unwrap()
            .len()
            > 3
    );
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

/// A model that takes a debug build a few seconds to quantize.
fn large_model(path: &Path) {
    let tensors: Vec<Tensor> = (0..24)
        .map(|i| {
            Tensor::f32(
                &format!("l{i:02}.weight"),
                &[512, 1024],
                &values(512 * 1024, i),
            )
        })
        .collect();
    write_safetensors(path, &tensors);
}

/// Starts `args`, waits for its partial to appear in `dir`, sends `signal`, and checks the run
/// either stopped with 128 + the signal's number leaving nothing, or had already finished.
/// Returns whether the signal stopped it.
fn stop_with(signal: &str, number: i32, args: &[&str], dir: &Path, output: &str) -> bool {
    let child = command(args, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while leftovers(dir).is_empty() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!leftovers(dir).is_empty(), "the run never started writing");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = finish(child, signal);
    let stopped = out.status.code() != Some(0);
    if stopped {
        assert_eq!(out.status.code(), Some(128 + number), "{}", stderr(&out));
        let e = stderr(&out);
        assert!(
            e.contains(&format!(
                "interrupted by SIG{signal}; no output was left behind"
            )),
            "{e}"
        );
        assert!(!dir.join(output).exists());
    } else {
        assert!(dir.join(output).exists());
        let _ = std::fs::remove_dir_all(dir.join(output));
        let _ = std::fs::remove_file(dir.join(output));
    }
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));
    stopped
}

#[test]
fn sigterm_and_sighup_leave_no_partial() {
    let dir = scratch("signals");
    large_model(&dir.join("m/model.safetensors"));
    let before = snapshot(&dir.join("m"));
    let mut stopped = 0;
    for (signal, number) in [("TERM", 15), ("HUP", 1), ("INT", 2)] {
        let args = ["quantize", "m", "-o", "out", "-q"];
        stopped += stop_with(signal, number, &args, &dir, "out") as usize;
    }
    assert!(
        stopped > 0,
        "every run finished before its signal: make the model larger"
    );
    assert_eq!(snapshot(&dir.join("m")), before);

    // dequantize too.
    succeeded(&run(&["quantize", "m", "-o", "out", "-q"], &dir));
    let args = ["dequantize", "out", "-o", "model.safetensors"];
    stop_with("TERM", 15, &args, &dir, "model.safetensors");
    stop_with("HUP", 1, &args, &dir, "model.safetensors");
}

#[test]
fn partials_left_by_dead_runs_are_removed() {
    let dir = scratch("stale");
    small_model(&dir.join("m/model.safetensors"));
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let alive = std::process::id();
    for name in [
        format!(".out.partial-{dead}"),
        format!(".out.partial-{alive}"),
        format!(".outer.partial-{dead}"),
        ".out.partial-abc".to_string(),
    ] {
        std::fs::create_dir_all(dir.join(&name)).unwrap();
        std::fs::write(dir.join(&name).join("weights.parquet"), vec![0u8; 4096]).unwrap();
    }
    let o = run(&["quantize", "m", "-o", "out", "-q"], &dir);
    succeeded(&o);
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            ".out.partial-{dead}, left unfinished by process {dead}, which no longer runs"
        )),
        "{e}"
    );
    let mut left = leftovers(&dir);
    left.sort();
    let mut expected = vec![
        ".out.partial-abc".to_string(),
        format!(".out.partial-{alive}"),
        format!(".outer.partial-{dead}"),
    ];
    expected.sort();
    assert_eq!(left, expected);

    // A dequantize partial (a file) likewise.
    std::fs::write(dir.join(format!(".model.safetensors.partial-{dead}")), "x").unwrap();
    let o = run(&["dequantize", "out", "-o", "model.safetensors"], &dir);
    succeeded(&o);
    assert!(
        stderr(&o).contains("which no longer runs"),
        "{}",
        stderr(&o)
    );
    assert!(
        !dir.join(format!(".model.safetensors.partial-{dead}"))
            .exists()
    );
}

#[test]
fn fifos_in_a_model_are_refused_not_waited_on() {
    let dir = scratch("fifo-inputs");
    // The model file itself, and a FIFO in a folder.
    mkfifo(&dir.join("lone.safetensors"));
    let o = run(&["quantize", "lone.safetensors", "-o", "out"], &dir);
    assert_fails_with(&o, "lone.safetensors: not a regular file (a FIFO)");
    mkfifo(&dir.join("folder/model.safetensors"));
    let o = run(&["quantize", "folder", "-o", "out"], &dir);
    assert_fails_with(&o, "folder/model.safetensors: not a regular file (a FIFO)");
    let o = run(&["inspect", "folder"], &dir);
    assert_fails_with(&o, "folder/model.safetensors: not a regular file (a FIFO)");

    // A shard.
    small_model(&dir.join("sharded/model-00001-of-00002.safetensors"));
    mkfifo(&dir.join("sharded/model-00002-of-00002.safetensors"));
    std::fs::write(
        dir.join("sharded/model.safetensors.index.json"),
        r#"{"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                           "c.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let o = run(&["quantize", "sharded", "-o", "out"], &dir);
    assert_fails_with(
        &o,
        "sharded/model-00002-of-00002.safetensors: not a regular file (a FIFO)",
    );

    // JSON files: the shard index, a config, a pipeline index.
    small_model(&dir.join("configured/model.safetensors"));
    mkfifo(&dir.join("configured/config.json"));
    let o = run(&["quantize", "configured", "-o", "out"], &dir);
    assert_fails_with(&o, "configured/config.json: not a regular file (a FIFO)");
    mkfifo(&dir.join("index/model.safetensors.index.json"));
    let o = run(&["quantize", "index", "-o", "out"], &dir);
    assert_fails_with(
        &o,
        "index/model.safetensors.index.json: not a regular file (a FIFO)",
    );
    mkfifo(&dir.join("pipeline/model_index.json"));
    let o = run(&["quantize", "pipeline", "-o", "out"], &dir);
    assert_fails_with(&o, "pipeline/model_index.json: not a regular file (a FIFO)");

    // The table function, on the current directory.
    let o = run(
        &[
            "sql",
            "-q",
            "-c",
            "SELECT count(*) FROM read_safetensors('.')",
        ],
        &dir.join("folder"),
    );
    assert_fails_with(&o, "./model.safetensors: not a regular file (a FIFO)");
    let o = run(
        &[
            "sql",
            "-q",
            "-c",
            "SELECT * FROM safetensors_info('lone.safetensors')",
        ],
        &dir,
    );
    assert_fails_with(&o, "lone.safetensors: not a regular file (a FIFO)");
    assert!(!dir.join("out").exists());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn pipeline_components_stay_in_the_pipeline() {
    let dir = scratch("component-names");
    small_model(&dir.join("outside/diffusion_pytorch_model.safetensors"));
    small_model(&dir.join("p/unet/diffusion_pytorch_model.safetensors"));
    let outside = dir.join("outside");
    for key in [
        "../outside",
        outside.to_str().unwrap(),
        "unet/../../outside",
        ".",
        "",
    ] {
        let index = serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DModel"],
            key: ["diffusers", "UNet2DModel"],
        });
        std::fs::write(dir.join("p/model_index.json"), index.to_string()).unwrap();
        let o = run(&["quantize", "p", "-o", "out", "-q"], &dir);
        assert_fails_with(
            &o,
            &format!(
                "p/model_index.json: bad pipeline index: component '{key}' is not a folder name"
            ),
        );
    }
}

#[test]
fn hostile_output_paths() {
    let dir = scratch("hostile-paths");
    small_model(&dir.join("m/model.safetensors"));
    for out in [".", "..", "/", "m/..", "m/../.."] {
        let o = run(&["quantize", "m", "-o", out, "--force", "-q"], &dir);
        assert_fails_with(
            &o,
            &format!("output path '{out}' names no directory of its own"),
        );
    }
    let o = run(&["quantize", "m", "-o", "", "-q"], &dir);
    assert_ne!(o.status.code(), Some(0));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    // The parent of the input file, the input folder with a trailing slash or through `.`.
    for out in ["m", "m/", "m/.", "./m", "m/../m"] {
        let o = run(
            &[
                "quantize",
                "m/model.safetensors",
                "-o",
                out,
                "--force",
                "-q",
            ],
            &dir,
        );
        assert_fails_with(&o, &format!("output {out} would replace the input model"));
    }
    let absolute = dir.join("m");
    let o = run(
        &["quantize", "m", "-o", absolute.to_str().unwrap(), "--force"],
        &dir,
    );
    assert_fails_with(&o, "would replace the input model");
    assert!(dir.join("m/model.safetensors").is_file());
    // Through a file, and where nothing can be created: one line, no panic.
    let o = run(&["quantize", "m", "-o", "m/model.safetensors/out"], &dir);
    assert_fails_with(&o, "m/model.safetensors/out: Not a directory");
    let o = run(&["quantize", "m", "-o", "/proc/arrowquant-out", "-q"], &dir);
    assert_fails_with(&o, "cannot create");
    // A trailing slash or dot on a new directory is fine.
    succeeded(&run(&["quantize", "m", "-o", "new/", "-q"], &dir));
    succeeded(&run(&["quantize", "m", "-o", "new2/.", "-q"], &dir));
    assert!(dir.join("new/manifest.json").is_file() && dir.join("new2/manifest.json").is_file());
    // dequantize: a file name is expected.
    let o = run(&["dequantize", "new", "-o", "x.safetensors/"], &dir);
    assert_fails_with(&o, "ends with '/': a file name is expected");
    let o = run(&["dequantize", "new", "-o", ".."], &dir);
    assert_fails_with(&o, "names no file of its own");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn a_run_stuck_in_blocking_code_still_stops_on_sigterm() {
    // Reading a FIFO nobody writes blocks the work itself (a configuration file may be a pipe,
    // so it is waited on): the signal must stop the process anyway.
    let dir = scratch("stuck");
    small_model(&dir.join("m/model.safetensors"));
    mkfifo(&dir.join("config.yaml"));
    let child = command(
        &["quantize", "m", "-o", "out", "--config", "config.yaml"],
        &dir,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = finish(child, "stuck");
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted by SIGTERM"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("out").exists());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}
