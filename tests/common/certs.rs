//! Test certificates made with `openssl`: a CA, a server certificate for
//! 127.0.0.1 (valid, or one that expired in 2020) and a client certificate,
//! all signed by the CA, as PEM files in a directory; and the broker's PEM
//! key store (key and certificate in one file).

use std::path::Path;
use std::process::Command;

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ca.pem`/`ca.key`, `server.pem`/`server.key` (SAN 127.0.0.1 and
/// localhost) and `client.pem`/`client.key`, valid for two days.
pub fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kdr-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    for (name, san) in [("server", true), ("client", false)] {
        request(dir, name);
        let (csr, pem) = (format!("{name}.csr"), format!("{name}.pem"));
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
        ];
        if san {
            args.extend(["-extfile", "san.ext"]);
        }
        openssl(dir, &args);
    }
}

fn request(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN=kdr-{name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
}

/// `expired.pem`/`expired.key`: a server certificate for 127.0.0.1 signed by
/// the CA of [`make_certificates`] (call that first), valid only on 1-2
/// January 2020 (`openssl ca` sets past dates, which `x509 -days` cannot).
pub fn make_expired_server_certificate(dir: &Path) {
    request(dir, "expired");
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "1000\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\n\
         serial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
         [any]\ncommonName = supplied\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            "expired.csr",
            "-out",
            "expired.pem",
            "-notext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extfile",
            "san.ext",
        ],
    );
}

/// A single-node Kafka whose client listener speaks TLS with the test
/// certificates (`server`, signed by `ca`); `client_auth` is `none` or `required`.
pub fn tls_broker(dir: &Path, client_auth: &str) -> super::Broker {
    let keystore = pem_keystore(dir, "server");
    super::Broker::start_with(
        dir,
        &super::BrokerSetup {
            protocol: "SSL".into(),
            props: vec![
                "ssl.keystore.type=PEM".into(),
                format!("ssl.keystore.location={keystore}"),
                "ssl.truststore.type=PEM".into(),
                format!("ssl.truststore.location={}", dir.join("ca.pem").display()),
                format!("ssl.client.auth={client_auth}"),
            ],
            ..Default::default()
        },
    )
}

/// Writes `NAME-keystore.pem` (Kafka's PEM key store: the unencrypted key
/// and the certificate in one file) and returns its path.
pub fn pem_keystore(dir: &Path, name: &str) -> String {
    let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    let cert = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
    let path = dir.join(format!("{name}-keystore.pem"));
    std::fs::write(&path, key + &cert).unwrap();
    path.display().to_string()
}
