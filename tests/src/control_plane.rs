//! A real Kubernetes control plane on loopback for the DRA tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built by `scripts/provision-k8s.sh` (cached),
//! with certificates generated per run by the `openssl` CLI. Everything listens on
//! 127.0.0.1 on free ports and is killed (and its directory removed) on drop.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! let cp = mock_accel_tests::control_plane::ControlPlane::start()?;
//! let out = cp.kubectl(&["get", "deviceclasses"])?;
//! # Ok(()) }
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::TestDir;

/// Where the Kubernetes binaries are: runs `scripts/provision-k8s.sh` (instant when cached,
/// a long Go build otherwise) and returns its bin directory.
pub fn k8s_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MOCK_ACCEL_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = repo_root().join("scripts/provision-k8s.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "scripts/provision-k8s.sh failed ({}); run it by hand to see why",
            out.status
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text.lines().last().unwrap_or_default().trim();
    if dir.is_empty() {
        bail!("scripts/provision-k8s.sh printed no bin directory");
    }
    Ok(PathBuf::from(dir))
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run openssl (scripts/install-host-deps.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "openssl {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A process killed (SIGKILL to its process group) on drop.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, dir: &Path, bin: &Path, args: &[String]) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("{name}.log"));
        // Append: a restarted component keeps the log of its previous run.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self { name, child, log })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "{} exited with {status}; last log lines:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The daemons start no children of their own: SIGKILL the process itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running control plane. Dropping it stops every process and removes its files.
#[derive(Debug)]
pub struct ControlPlane {
    /// Components, stopped in reverse order of start on drop.
    daemons: Vec<Daemon>,
    bin: PathBuf,
    kubeconfig: PathBuf,
    /// Address of the API server (`https://127.0.0.1:PORT`).
    pub server: String,
    /// Time from the first process start to a ready API server and scheduler.
    pub startup: Duration,
    /// kube-apiserver's arguments, kept for [`ControlPlane::start_apiserver`].
    api_args: Vec<String>,
    dir: TestDir,
}

impl ControlPlane {
    /// Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler.
    pub fn start() -> anyhow::Result<Self> {
        let bin = k8s_bin_dir()?;
        for b in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
        ] {
            if !bin.join(b).is_file() {
                bail!(
                    "{} missing in {}: run scripts/provision-k8s.sh",
                    b,
                    bin.display()
                );
            }
        }
        let dir = TestDir::new("k8s")?;
        let d = dir.path().to_path_buf();
        Self::certificates(&d)?;
        let started = Instant::now();
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = d.join("admin.kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\ncurrent-context: local\n",
                ca = d.join("ca.crt").display(),
                crt = d.join("admin.crt").display(),
                key = d.join("admin.key").display(),
            ),
        )?;
        let s = |p: &str| d.join(p).display().to_string();
        let mut cp = Self {
            daemons: Vec::new(),
            bin: bin.clone(),
            kubeconfig: kubeconfig.clone(),
            server: server.clone(),
            startup: Duration::ZERO,
            api_args: Vec::new(),
            dir,
        };
        cp.daemons.push(Daemon::spawn(
            "etcd",
            &d,
            &bin.join("etcd"),
            &[
                format!("--data-dir={}", s("etcd-data")),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--log-level=warn".into(),
                "--unsafe-no-fsync".into(),
            ],
        )?);
        cp.api_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", s("apiserver.crt")),
            format!("--tls-private-key-file={}", s("apiserver.key")),
            format!("--client-ca-file={}", s("ca.crt")),
            format!("--service-account-key-file={}", s("sa.pub")),
            format!("--service-account-signing-key-file={}", s("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            // DRA is GA in 1.34 (resource.k8s.io/v1 on by default); say so explicitly.
            "--runtime-config=resource.k8s.io/v1=true".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--profiling=false".into(),
            // As kubeadm/k3s clusters do: the DaemonSet writes sysfs and needs it.
            "--allow-privileged=true".into(),
            // The `kubernetes` Service cannot point at loopback; nothing here needs it.
            "--endpoint-reconciler-type=none".into(),
            "--v=1".into(),
        ];
        cp.start_apiserver()?;
        let common = |name: &str| {
            vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".to_string(),
                "--bind-address=127.0.0.1".to_string(),
                format!("--secure-port={}", free_port().unwrap_or(0)),
                format!("--v={}", if name == "scheduler" { 2 } else { 1 }),
            ]
        };
        let mut kcm = common("kcm");
        kcm.extend([
            format!("--service-account-private-key-file={}", s("sa.key")),
            format!("--root-ca-file={}", s("ca.crt")),
            "--use-service-account-credentials=false".into(),
            // No kubelet heartbeats here: the node lifecycle controller would taint fake Nodes.
            "--controllers=*,-serviceaccount-token,-nodelifecycle".into(),
        ]);
        cp.daemons.push(Daemon::spawn(
            "kube-controller-manager",
            &d,
            &bin.join("kube-controller-manager"),
            &kcm,
        )?);
        cp.daemons.push(Daemon::spawn(
            "kube-scheduler",
            &d,
            &bin.join("kube-scheduler"),
            &common("scheduler"),
        )?);
        cp.wait_ready(
            "resource.k8s.io/v1",
            &["get", "--raw", "/apis/resource.k8s.io/v1"],
        )?;
        cp.startup = started.elapsed();
        Ok(cp)
    }

    /// Stops kube-apiserver (SIGKILL), as an API server crash or restart looks to clients.
    pub fn stop_apiserver(&mut self) {
        self.daemons.retain(|d| d.name != "kube-apiserver");
    }

    /// Starts kube-apiserver (again) with the same arguments, port and etcd, and waits until
    /// it is ready.
    pub fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path().to_path_buf();
        let bin = self.bin.join("kube-apiserver");
        let daemon = Daemon::spawn("kube-apiserver", &dir, &bin, &self.api_args)?;
        self.daemons.push(daemon);
        self.wait_ready("kube-apiserver", &["get", "--raw", "/readyz"])
    }

    fn certificates(d: &Path) -> anyhow::Result<()> {
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=mock-accel-test-ca",
            ],
        )?;
        std::fs::write(
            d.join("apiserver.ext"),
            "subjectAltName=IP:127.0.0.1,IP:10.0.2.2,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n",
        )?;
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        for (name, subject, ext) in [
            ("apiserver", "/CN=kube-apiserver", "apiserver.ext"),
            ("admin", "/O=system:masters/CN=admin", "client.ext"),
        ] {
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let crt = format!("{name}.crt");
            openssl(
                d,
                &[
                    "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                    subject,
                ],
            )?;
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &crt,
                    "-extfile",
                    ext,
                ],
            )?;
        }
        openssl(d, &["genrsa", "-out", "sa.key", "2048"])?;
        openssl(d, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(())
    }

    fn wait_ready(&mut self, what: &str, args: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for daemon in &mut self.daemons {
                daemon.check_alive()?;
            }
            if self.kubectl_quiet(args).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} not ready after 120 s; logs in {}",
                    self.dir.path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The admin kubeconfig (client certificate in group system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory with certificates and component logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Kubernetes bin directory (kubectl, kubelet, ...).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    fn kubectl_quiet(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run kubectl against this control plane; stdout on success, stderr in the error.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_quiet(args)
            .with_context(|| format!("kubectl {}", args.join(" ")))
    }

    /// Run kubectl with `stdin` as input (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl get ... -o json, parsed.
    pub fn get_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&a)?)?)
    }

    /// The tail of a component's log (for assertion messages).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{component}.log")))
            .unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(d) = self.daemons.pop() {
            drop(d);
        }
    }
}

/// A Node object that the scheduler treats as Ready and schedulable (no kubelet behind it).
pub fn create_ready_node(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\n"
        ),
    )?;
    let status = serde_json::json!({
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "fake node for mock-accel tests"}],
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}
        }
    });
    cp.kubectl(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])?;
    // Admission taints new Nodes not-ready; with no kubelet and no node lifecycle controller
    // nothing would lift it.
    cp.kubectl(&[
        "patch",
        "node",
        name,
        "--type=merge",
        "-p",
        r#"{"spec":{"taints":null}}"#,
    ])?;
    Ok(())
}

/// The cache directory shared by every provisioned artefact (`MOCK_ACCEL_CACHE`, else
/// `~/.cache/mock-accel`).
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    std::env::var_os("MOCK_ACCEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mock-accel")))
        .context("neither MOCK_ACCEL_CACHE nor HOME is set")
}

/// Runs `go` with the project's module and build caches (under [`cache_dir`]) and no
/// toolchain downloads; fails with stderr when go fails.
fn run_go(
    args: &[&str],
    dir: &Path,
    extra_env: &[(&str, &Path)],
    what: &str,
) -> anyhow::Result<()> {
    let cache = cache_dir()?;
    let mut cmd = Command::new("go");
    cmd.args(args)
        .current_dir(dir)
        .env("GOMODCACHE", cache.join("go/mod"))
        .env("GOCACHE", cache.join("go/build"))
        .env("GOFLAGS", "-buildvcs=false")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run go (install Go >= 1.24) to build {what}"))?;
    if !out.status.success() {
        bail!(
            "go build of {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The Go kubelet-side client (`tests/kubelet-client`, built against the published
/// `k8s.io/kubelet` API packages), built with the host's Go into the cache, keyed by its
/// sources.
pub fn kubelet_client_binary() -> anyhow::Result<PathBuf> {
    let src = repo_root().join("tests/kubelet-client");
    let mut key = std::collections::hash_map::DefaultHasher::new();
    for f in ["main.go", "go.mod", "go.sum"] {
        use std::hash::Hash;
        std::fs::read(src.join(f))
            .with_context(|| format!("cannot read tests/kubelet-client/{f}"))?
            .hash(&mut key);
        f.hash(&mut key);
    }
    let key = std::hash::Hasher::finish(&key);
    let bin = cache_dir()?.join(format!("kubelet-client-{key:016x}"));
    if !bin.is_file() {
        let target = bin.display().to_string();
        run_go(
            &["build", "-o", &target, "."],
            &src,
            &[],
            "tests/kubelet-client",
        )?;
    }
    Ok(bin)
}

/// Helm version used to render `charts/mock-device` (Helm is not packaged for Debian
/// bookworm; it is built from its Go module through the module proxy, ~2-4 min cold).
pub const HELM_VERSION: &str = "v3.19.0";

/// `helm`, from `HELM=` or built with `go install helm.sh/helm/v3/cmd/helm@HELM_VERSION`
/// into `<cache>/helm-<version>/helm`.
pub fn helm_binary() -> anyhow::Result<PathBuf> {
    if let Some(helm) = std::env::var_os("HELM") {
        return Ok(PathBuf::from(helm));
    }
    let dir = cache_dir()?.join(format!("helm-{HELM_VERSION}"));
    let bin = dir.join("helm");
    if !bin.is_file() {
        let partial = dir.with_extension("partial");
        let module = format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}");
        run_go(
            &["install", "-trimpath", "-ldflags=-s -w", &module],
            &std::env::temp_dir(),
            &[("GOBIN", &partial)],
            &module,
        )?;
        std::fs::rename(&partial, &dir)
            .with_context(|| format!("cannot move {} into place", partial.display()))?;
    }
    Ok(bin)
}

/// Run the Go kubelet client; its JSON answer.
pub fn kubelet_client(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(kubelet_client_binary()?).args(args).output()?;
    if !out.status.success() {
        bail!(
            "kubelet-client {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
