//! nginx as a peer in the balancing benches: started on a free loopback
//! port with a config of its own, stopped on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// nginx over the same backends with a given balancing directive, run for
/// a bench only; stopped on drop.
pub struct Nginx {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl Nginx {
    pub fn start(backends: &[SocketAddr], dir: &Path, balance: &str) -> Option<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?;
        let servers: String = backends
            .iter()
            .map(|b| format!("    server {b};\n"))
            .collect();
        let conf = dir.join("nginx.conf");
        let text = format!(
            "worker_processes 1;\ndaemon off;\npid {0}/nginx.pid;\nerror_log {0}/nginx-error.log warn;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {0};\n\
               upstream backends {{\n    {balance}\n{servers}    keepalive 64;\n  }}\n\
               server {{\n    listen {port};\n    location / {{\n      proxy_pass http://backends;\n\
                   proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_read_timeout 60s;\n    }}\n  }}\n}}\n",
            dir.display()
        );
        std::fs::write(&conf, text).ok()?;
        let child = std::process::Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let nginx = Nginx { addr: port, child };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(port).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(nginx)
    }
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers too (SIGKILL would orphan
    /// them).
    fn drop(&mut self) {
        let stopped = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
