//! TLS on both sides, against real `redis-server --tls-port` processes: certificates made
//! at run time with the `openssl` CLI (a CA, a server certificate for 127.0.0.1 as an IP
//! SAN, a client certificate for mTLS, and an unrelated CA), the four ferry processes
//! syncing a TLS source into a TLS target, a wrong CA reported in one line, and no
//! password in any log line or in `/status`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_resp::{Auth, Connection, TlsSettings};
use integration_tests::*;

const PASSWORD: &str = "tls-test-Pa55word-7f3a9c";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl (is it installed?)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Test certificates in a temp dir.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn generate() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                    "-subj",
                    &format!("/CN=ferry {ca}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        let certs = Certs { dir };
        certs.leaf("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
        certs.leaf("client", "extendedKeyUsage=clientAuth\n");
        std::fs::write(certs.path("password"), format!("{PASSWORD}\n")).unwrap();
        certs
    }

    /// One certificate of `ca` per role (`<role>.crt`, `<role>.key`), each naming its role
    /// as a DNS name (`ferry-reader`, ...), as the processes' identities, valid for 127.0.0.1.
    fn with_roles(self, roles: &[&str]) -> Certs {
        for role in roles {
            let ext = format!("subjectAltName=DNS:ferry-{role},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
            self.leaf(role, &ext);
        }
        self
    }

    /// A certificate `name.crt` (key `name.key`) signed by `ca.crt`, with extensions `ext`.
    fn leaf(&self, name: &str, ext: &str) {
        let d = self.dir.path();
        std::fs::write(d.join(format!("{name}.ext")), format!("basicConstraints=CA:FALSE\n{ext}")).unwrap();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN=ferry {name}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Client settings with the client certificate (mTLS), trusting `ca`.
    fn client(&self, ca: &str) -> TlsSettings {
        TlsSettings {
            ca_file: Some(self.path(ca)),
            cert_file: Some(self.path("client.crt")),
            key_file: Some(self.path("client.key")),
            ..Default::default()
        }
    }

    /// The `[source]`/`[target]` TLS lines of ferry.toml.
    fn toml(&self, ca: &str) -> String {
        format!(
            "tls = true\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\npassword_file = \"{}\"\n",
            self.p(ca),
            self.p("client.crt"),
            self.p("client.key"),
            self.p("password")
        )
    }
}

/// A TLS-only `redis-server` (`--port 0 --tls-port P`) with `requirepass`; killed on drop.
struct TlsRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
    tls: TlsSettings,
}

impl TlsRedis {
    fn start(certs: &Certs, auth_clients: bool) -> TlsRedis {
        require_redis();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
        let args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.path().display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--requirepass",
            PASSWORD,
            "--tls-cert-file",
            &certs.p("server.crt"),
            "--tls-key-file",
            &certs.p("server.key"),
            "--tls-ca-cert-file",
            &certs.p("ca.crt"),
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
            "--tls-replication",
            "yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        let s = TlsRedis { port, dir, child, tls: certs.client("ca.crt") };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = rt().block_on(async {
                let mut c = s.connect().await.ok()?;
                c.call(&["PING"]).await.ok()
            });
            if ok.is_some() {
                return s;
            }
            assert!(Instant::now() < deadline, "TLS redis-server on {} did not start: {}", s.addr(), s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        let auth = Auth { username: None, password: Some(PASSWORD.into()) };
        Ok(Connection::connect_with(&self.addr(), &auth, Some(&self.tls), Duration::from_secs(5)).await?)
    }

    async fn repl_offset(&self) -> anyhow::Result<i64> {
        let mut c = self.connect().await?;
        let info = c.call(&["INFO", "replication"]).await?;
        ferry_resp::replication::info_field(&info, "master_repl_offset")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no master_repl_offset"))
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(certs: &Certs, src: &TlsRedis, src_ca: &str, tgt: &TlsRedis) -> (String, String) {
    config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n{}\n[target]\naddress = \"{}\"\n{}\n",
        src.addr(),
        certs.toml(src_ca),
        tgt.addr(),
        certs.toml("ca.crt")
    ))
}

/// Every log line of the run and `/status` (and `/metrics`): none may hold the password or key.
fn assert_no_secret(certs: &Certs, ferry: &Ferry) {
    let mut all = ferry.logs();
    all.push_str(&http_get(&ferry.status_addr, "/status").unwrap_or_default());
    all.push_str(&http_get(&ferry.status_addr, "/metrics").unwrap_or_default());
    assert!(!all.is_empty());
    assert!(!all.contains(PASSWORD), "the password appears in the output of the run:\n{all}");
    let key = std::fs::read_to_string(certs.path("client.key")).unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!all.contains(line), "the client key appears in the output of the run");
    }
}

#[test]
fn client_checks_the_server_and_the_server_checks_the_client() {
    let certs = Certs::generate();
    let server = TlsRedis::start(&certs, true);
    let auth = Auth { username: None, password: Some(PASSWORD.into()) };
    let rt = rt();
    let try_connect = |tls: TlsSettings| {
        rt.block_on(async {
            let mut c = Connection::connect_with(&server.addr(), &auth, Some(&tls), Duration::from_secs(5)).await?;
            c.call(&["PING"]).await
        })
    };
    // mTLS with the right CA: fine (the IP address is checked against the IP SAN).
    try_connect(certs.client("ca.crt")).unwrap();
    // An unknown CA: one line naming TLS, the certificate and the address.
    let e = try_connect(certs.client("other-ca.crt")).unwrap_err().to_string();
    assert!(e.contains("TLS") && e.contains("certificate") && e.contains(&server.addr()) && !e.contains('\n'), "{e}");
    // A name the certificate does not carry.
    let e = try_connect(TlsSettings { server_name: Some("redis.example".into()), ..certs.client("ca.crt") })
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
    // No client certificate, while the server requires one.
    let e =
        try_connect(TlsSettings { ca_file: Some(certs.path("ca.crt")), ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains(&server.addr()) && !e.contains(PASSWORD), "{e}");
    // Insecure: any certificate is accepted.
    try_connect(TlsSettings { insecure_skip_verify: true, ca_file: None, ..certs.client("other-ca.crt") }).unwrap();
    // Plaintext to a TLS port fails, and TLS to a plaintext port is reported as TLS.
    assert!(rt.block_on(Connection::connect(&server.addr(), &auth, Duration::from_secs(2))).is_err());
    let plain = RedisServer::start(&[]);
    let e = rt
        .block_on(Connection::connect_with(
            &plain.addr(),
            &Auth::default(),
            Some(&certs.client("ca.crt")),
            Duration::from_secs(2),
        ))
        .err()
        .expect("TLS to a plaintext port must fail")
        .to_string();
    assert!(e.contains("TLS") && e.contains(&plain.addr()), "{e}");
}

#[test]
fn tls_source_to_tls_target_with_mtls() {
    let certs = Certs::generate();
    let src = TlsRedis::start(&certs, true);
    let tgt = TlsRedis::start(&certs, true);
    let rt = rt();
    rt.block_on(async {
        let mut c = src.connect().await?;
        for i in 0..200 {
            c.call(&["SET", &format!("full:{i}"), &format!("v{i}")]).await?;
        }
        c.call(&["HSET", "full:hash", "f", "v"]).await?;
        c.call(&["RPUSH", "full:list", "a", "b", "c"]).await?;
        anyhow::Ok(())
    })
    .unwrap();
    let (cfg, status) = config(&certs, &src, "ca.crt", &tgt);
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("incremental", Duration::from_secs(60), |p| p["phase"] == "incremental");
    let offset = rt
        .block_on(async {
            let mut c = src.connect().await?;
            c.call(&["SET", "inc:a", "after the full copy"]).await?;
            c.call(&["INCRBY", "inc:n", "41"]).await?;
            c.call(&["DEL", "full:7"]).await?;
            c.call(&["MULTI"]).await?;
            c.call(&["SADD", "inc:set", "x", "y"]).await?;
            c.call(&["EXPIRE", "full:8", "1000"]).await?;
            c.call(&["EXEC"]).await?;
            src.repl_offset().await
        })
        .unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));
    let n = rt
        .block_on(async {
            let mut a = src.connect().await?;
            let mut b = tgt.connect().await?;
            let mut t = tgt.connect().await?;
            assert_eq!(
                t.call(&["GET", "inc:a"]).await?.as_bytes().map(|b| b.to_vec()),
                Some(b"after the full copy".to_vec())
            );
            compare(&mut a, &mut b, 2000).await
        })
        .unwrap();
    assert_eq!(n, 204, "keys compared");
    assert_no_secret(&certs, &ferry);
    // ferry-verify reaches the same two tls-port servers (client certificates required)
    // with the same configuration, through the stages' connection code.
    let out = Command::new(bin_dir().join("ferry-verify"))
        .arg("--config")
        .arg(ferry.dir.path().join("ferry.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferry-verify over TLS: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn wrong_ca_is_one_line_in_status_naming_tls_and_the_address() {
    let certs = Certs::generate();
    let src = TlsRedis::start(&certs, true);
    let tgt = TlsRedis::start(&certs, true);
    // The source's certificate is checked against an unrelated CA.
    let (cfg, status) = config(&certs, &src, "other-ca.crt", &tgt);
    let ferry = Ferry::start(&cfg, &status);
    let p = ferry
        .wait_for("a TLS error", Duration::from_secs(60), |p| p["error"].as_str().is_some_and(|e| e.contains("TLS")));
    let e = p["error"].as_str().unwrap();
    eprintln!("status error: {e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("certificate") && e.contains(&src.addr()), "{e}");
    assert!(p["phase"] != "incremental", "{p:#}");
    assert_no_secret(&certs, &ferry);
}

/// A gRPC channel to `addr` over TLS trusting `ca.crt`, presenting `<who>.crt` (none: no
/// client certificate).
async fn channel_as(certs: &Certs, addr: &str, who: Option<&str>) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let ca = Certificate::from_pem(std::fs::read(certs.path("ca.crt")).unwrap());
    let mut tls = ClientTlsConfig::new().ca_certificate(ca).domain_name("127.0.0.1");
    if let Some(who) = who {
        let read = |ext: &str| std::fs::read(certs.path(&format!("{who}.{ext}"))).unwrap();
        tls = tls.identity(Identity::from_pem(read("crt"), read("key")));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap();
    endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))
}

/// One call of `endpoint` on `channel`; a call a role may make changes nothing (an empty
/// stream, a plan, the role).
async fn call(endpoint: &str, channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    use ferry_proto::coordinator_client::CoordinatorClient;
    match endpoint {
        "Coordinator.Plan" => CoordinatorClient::new(channel)
            .plan(ferry_proto::AssignRequest { role: "reader".into(), ..Default::default() })
            .await
            .map(drop),
        "Coordinator.Report" => CoordinatorClient::new(channel)
            .report(ferry_proto::StatusReport {
                pipeline_id: "probe".into(),
                role: "reader".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "Coordinator.GetRole" => {
            CoordinatorClient::new(channel).get_role(ferry_proto::RoleRequest::default()).await.map(drop)
        }
        "Coordinator.SetRole" => CoordinatorClient::new(channel)
            .set_role(ferry_proto::RoleRequest { role: "fenced".into(), reason: "probe".into(), ..Default::default() })
            .await
            .map(drop),
        "Decoder.Sync" => ferry_proto::decoder_client::DecoderClient::new(channel)
            .sync(futures::stream::empty::<ferry_proto::Frame>())
            .await
            .map(drop),
        "Writer.Apply" => ferry_proto::writer_client::WriterClient::new(channel)
            .apply(futures::stream::empty::<ferry_proto::Batch>())
            .await
            .map(drop),
        other => panic!("no endpoint {other}"),
    }
}

/// The `value` of `key = "value"` in `[section]` of a config made by `config_with_ports`.
fn value_in(cfg: &str, section: &str, key: &str) -> String {
    let rest = &cfg[cfg.find(&format!("[{section}]\n")).expect("section")..];
    let at = rest.find(&format!("{key} = \"")).expect("key") + key.len() + 4;
    rest[at..at + rest[at..].find('"').unwrap()].to_string()
}

/// Each process presents its own role's certificate (`{role}` in the `[grpc]` paths), the
/// four of them sync over mutual TLS, and each endpoint admits only the roles that may call
/// it: a certificate of another role, of no role, of another CA, none at all, or plaintext
/// is refused, the refusals counted in `/metrics`.
#[test]
fn grpc_links_are_mutual_tls_and_each_endpoint_admits_only_its_callers() {
    let certs = Certs::generate().with_roles(&["reader", "decoder", "writer", "coordinator", "watcher"]);
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    rt().block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let dir = certs.p("");
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n[grpc]\ntls_ca_file = \"{dir}ca.crt\"\n\
         tls_cert_file = \"{dir}{{role}}.crt\"\ntls_key_file = \"{dir}{{role}}.key\"\n",
        src.addr(),
        tgt.addr(),
    ));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    rt().block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
    let coordinator = value_in(&cfg, "coordinator", "grpc_addr");
    let decoder = value_in(&cfg, "decoder", "listen");
    let writer = value_in(&cfg, "writer", "listen");
    let endpoints = [
        ("Coordinator.Plan", &coordinator, "ferry-reader or ferry-decoder or ferry-writer"),
        ("Coordinator.Report", &coordinator, "ferry-reader or ferry-decoder or ferry-writer"),
        ("Coordinator.GetRole", &coordinator, "ferry-watcher or ferry-admin"),
        ("Coordinator.SetRole", &coordinator, "ferry-watcher or ferry-admin"),
        ("Decoder.Sync", &decoder, "ferry-reader"),
        ("Writer.Apply", &writer, "ferry-decoder"),
    ];
    let rt = rt();
    // The roles each endpoint must refuse ("server": a certificate of the CA naming no role).
    let refused: [(&str, &[&str]); 6] = [
        ("Coordinator.Plan", &["watcher", "coordinator", "server"]),
        ("Coordinator.Report", &["watcher", "server"]),
        ("Coordinator.GetRole", &["reader", "decoder", "writer", "server"]),
        ("Coordinator.SetRole", &["reader", "decoder", "writer", "coordinator", "server"]),
        ("Decoder.Sync", &["decoder", "writer", "watcher", "coordinator", "server"]),
        ("Writer.Apply", &["reader", "writer", "watcher", "coordinator", "server"]),
    ];
    for (endpoint, who) in refused {
        let (_, addr, expected) = endpoints.iter().find(|e| e.0 == endpoint).unwrap();
        for who in who {
            let status = rt
                .block_on(async { call(endpoint, channel_as(&certs, addr, Some(who)).await.unwrap()).await })
                .expect_err(&format!("{endpoint} admitted a {who} certificate"));
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{endpoint} as {who}: {status:?}");
            assert!(status.message().contains(expected), "{endpoint} as {who}: {}", status.message());
        }
        // No client certificate, one of another CA, or plaintext: no call at all.
        for who in [None, Some("other-ca")] {
            let r = rt.block_on(async {
                match channel_as(&certs, addr, who).await {
                    Err(e) => Err(e),
                    Ok(c) => call(endpoint, c).await.map_err(|s| format!("{s:?}")),
                }
            });
            assert!(r.is_err(), "{endpoint} answered a client with {who:?}");
        }
        let plain = rt.block_on(async {
            match tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await {
                Err(e) => Err(format!("{e:?}")),
                Ok(c) => call(endpoint, c).await.map_err(|s| format!("{s:?}")),
            }
        });
        assert!(plain.is_err(), "{endpoint} answered a plaintext client");
    }
    // The callers each endpoint is for get in.
    rt.block_on(async {
        call("Coordinator.Plan", channel_as(&certs, &coordinator, Some("reader")).await.unwrap()).await.unwrap();
        call("Coordinator.GetRole", channel_as(&certs, &coordinator, Some("watcher")).await.unwrap()).await.unwrap();
    });
    // Counted where they were refused.
    let metrics = http_get(&status, "/metrics").unwrap();
    assert!(metrics.contains("ferry_grpc_denied_total{endpoint=\"Coordinator.SetRole\"} 5"), "{metrics}");
    let writer_metrics = http_get(&metrics_addr_of(&cfg, "writer"), "/metrics").unwrap();
    assert!(writer_metrics.contains("ferry_grpc_denied_total{endpoint=\"Writer.Apply\"} 5"), "{writer_metrics}");
    // The watcher's own commands go through as the watcher, and not with a reader's certificate.
    let watcher = |config: &str, args: &[&str]| {
        let path = ferry.dir.path().join("watcher.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(bin_dir().join("ferry-watcher")).args(args).arg("--config").arg(&path).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = watcher(&cfg, &["status"]);
    assert!(ok && out.contains("forward"), "{out}");
    // A stage given another role's certificate refuses to start, naming the file and the
    // name it needs (instead of having every call refused).
    let as_reader = cfg.replace("{role}.crt", "reader.crt").replace("{role}.key", "reader.key");
    let path = ferry.dir.path().join("as-reader.toml");
    std::fs::write(&path, &as_reader).unwrap();
    let out = Command::new(bin_dir().join("ferry-writer")).arg("--config").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("grpc.tls_cert_file") && text.contains("ferry-writer") && text.contains("reader.crt"),
        "{text}"
    );
    let (ok, out) = watcher(&as_reader, &["fence", "--reason", "probe"]);
    assert!(!ok && out.contains("ferry-watcher, ferry-admin"), "{out}");
    assert!(rt.block_on(async { src.repl_offset().await }).is_ok());
    let role = http_get(&status, "/status").unwrap();
    assert!(role.contains("\"role\":\"forward\""), "{role}");
}
