//! The ring as users run it: `prima node` processes talking over loopback TCP.
//! A killed node makes the head fail within seconds with an error naming it and exit
//! non-zero; a node with the wrong key or a different model file is refused with a message;
//! `prima cluster --local` prints the same text as `prima run`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn prima() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prima"));
    c.env("PRIMA_LOG", "warn");
    c
}

fn model() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model.sh", p.display());
    p
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("prima-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let k = dir.join(name);
    assert!(prima().arg("keygen").arg(&k).status().unwrap().success());
    k
}

fn config(dir: &Path, rank: u32, world: u32, port: u16, key: &Path, model: &Path) -> PathBuf {
    let p = dir.join(format!("node{rank}-{}.toml", key.file_name().unwrap().to_string_lossy()));
    let mut s = format!(
        "rank = {rank}\nmodel = {model:?}\nhead = \"127.0.0.1:{port}\"\nlisten = \"127.0.0.1:0\"\nkey_file = {key:?}\nthreads = 1\nn_ctx = 1024\njoin_timeout_s = 30\nheartbeat_ms = 200\npeer_timeout_ms = 2000\n"
    );
    if rank == 0 {
        // An even split by hand: these tests are about the ring, not the scheduler.
        let w: Vec<String> = (0..world).map(|r| (30 / world + u32::from(r < 30 % world)).to_string()).collect();
        s.push_str(&format!("world = {world}\nlayer_window = [{}]\n", w.join(", ")));
    }
    std::fs::write(&p, s).unwrap();
    p
}

fn spawn_node(cfg: &Path, head_args: &[&str]) -> Child {
    prima()
        .arg("node")
        .arg("--config")
        .arg(cfg)
        .args(head_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_with_deadline(c: &mut Child, secs: u64) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = c.kill();
            panic!("process did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(c: &mut Child) -> String {
    let mut s = String::new();
    c.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn killing_a_node_fails_the_head_with_its_name() {
    let d = tempdir("kill");
    let key = keygen(&d.0, "k");
    let port = free_port();
    let mut head = spawn_node(
        &config(&d.0, 0, 3, port, &key, &model()),
        &["-p", "Once upon a time", "-n", "100000", "--temp", "0"],
    );
    let mut n1 = spawn_node(&config(&d.0, 1, 3, port, &key, &model()), &[]);
    let mut n2 = spawn_node(&config(&d.0, 2, 3, port, &key, &model()), &[]);
    // Wait for generated text, then kill node 2.
    let mut out = head.stdout.take().unwrap();
    let mut buf = [0u8; 16];
    out.read_exact(&mut buf).unwrap();
    n2.kill().unwrap();
    let t = Instant::now();
    let status = wait_with_deadline(&mut head, 20);
    let lost_after = t.elapsed();
    let err = stderr_of(&mut head);
    assert!(!status.success());
    assert!(err.contains("node 2"), "{err}");
    assert!(lost_after < Duration::from_secs(5), "took {lost_after:?}: {err}");
    // Node 1 does not hang either: it loses the head and exits non-zero.
    let s1 = wait_with_deadline(&mut n1, 20);
    assert!(!s1.success());
    let _ = n2.wait();
}

#[test]
fn a_wrong_key_and_a_different_model_are_refused() {
    let d = tempdir("refuse");
    let key = keygen(&d.0, "k");
    let other_key = keygen(&d.0, "other");
    // A copy of the model whose header differs by one byte of its name.
    let copy = d.0.join("copy.gguf");
    let mut bytes = std::fs::read(model()).unwrap();
    let needle = b"general.name";
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
    // key, then type (u32) and the string length (u64): flip the first character of the value.
    let value = at + needle.len() + 4 + 8;
    bytes[value] ^= 0x20;
    std::fs::write(&copy, &bytes).unwrap();
    drop(bytes);

    let port = free_port();
    let mut head = spawn_node(&config(&d.0, 0, 2, port, &key, &model()), &["-p", "Hi", "-n", "4", "--temp", "0"]);
    let mut wrong_key = spawn_node(&config(&d.0, 1, 2, port, &other_key, &model()), &[]);
    let s = wait_with_deadline(&mut wrong_key, 20);
    let err = stderr_of(&mut wrong_key);
    assert!(!s.success());
    assert!(err.contains("cluster key"), "{err}");

    let mut wrong_model = spawn_node(&config(&d.0, 1, 2, port, &key, &copy), &[]);
    let s = wait_with_deadline(&mut wrong_model, 20);
    let err = stderr_of(&mut wrong_model);
    assert!(!s.success());
    assert!(err.contains("model file differs"), "{err}");

    // The head is still waiting; a proper node completes the ring and the prompt runs.
    let mut good = spawn_node(&config(&d.0, 1, 2, port, &key, &model()), &[]);
    assert!(wait_with_deadline(&mut head, 60).success(), "{}", stderr_of(&mut head));
    assert!(wait_with_deadline(&mut good, 20).success());
}

#[test]
fn cluster_local_prints_what_run_prints() {
    let args = ["-p", "The capital of France is", "-n", "12", "--temp", "0"];
    let run = prima().arg("run").arg("-m").arg(model()).args(args).args(["-t", "1"]).output().unwrap();
    assert!(run.status.success());
    let cluster =
        prima().args(["cluster", "--local", "3", "--lw", "4,3,3"]).arg("-m").arg(model()).args(args).output().unwrap();
    assert!(cluster.status.success(), "{}", String::from_utf8_lossy(&cluster.stderr));
    assert_eq!(String::from_utf8_lossy(&cluster.stdout), String::from_utf8_lossy(&run.stdout));
    assert!(!run.stdout.is_empty());
}
