//! The accept loop of the tests' HTTP endpoints: a thread per connection, served
//! by the endpoint's own function on its shared state, until the endpoint is
//! dropped (open connections end with their peer).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A listening endpoint; stops accepting on drop.
pub struct Accepting {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Accepting {
    /// Listens on 127.0.0.1 (a free port) and serves each connection with `serve`.
    pub fn start<S: Send + Sync + 'static>(
        what: &str,
        state: Arc<S>,
        serve: fn(TcpStream, &S),
    ) -> Accepting {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind {what}: {e}"));
        let addr = l.local_addr().expect("its address");
        l.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        // Accepted sockets inherit O_NONBLOCK on some systems.
                        let _ = c.set_nonblocking(false);
                        let state = state.clone();
                        std::thread::spawn(move || serve(c, &state));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Accepting { addr, stop }
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
