//! RFC 1413: who owns the client's end of the connection.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chainmail_sys::Deadline;

use crate::io::read_some;

/// How long an identd has to answer, at most (less when `-c` is shorter).
pub const IDENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The user identd reports for the connection from `client` to `local`,
/// or why there is none.
pub fn query(client: SocketAddr, local: SocketAddr, timeout: Duration) -> Result<String, String> {
    let deadline = Deadline::after(timeout);
    let s = TcpStream::connect_timeout(&SocketAddr::new(client.ip(), 113), timeout).map_err(|e| e.to_string())?;
    (&s).write_all(format!("{} , {}\r\n", client.port(), local.port()).as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') {
        let n = read_some(&s, &mut chunk, deadline).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1000 {
            return Err("identd reply over 1000 bytes".into());
        }
    }
    parse(&String::from_utf8_lossy(&buf), client.port(), local.port())
}

/// `ports : USERID : os : user`.
fn parse(reply: &str, client_port: u16, local_port: u16) -> Result<String, String> {
    let line = reply.lines().next().unwrap_or("");
    let mut f = line.splitn(4, ':');
    let ports = f.next().unwrap_or("");
    let kind = f.next().unwrap_or("").trim();
    let ps: Vec<&str> = ports.split(',').map(str::trim).collect();
    if ps != [client_port.to_string(), local_port.to_string()] {
        return Err(format!("identd answered for other ports: {:?}", ports.trim()));
    }
    match kind {
        "USERID" => {
            let _os = f.next();
            let user = f.next().unwrap_or("").trim();
            if user.is_empty() {
                return Err("identd gave an empty user".into());
            }
            Ok(user.chars().take(255).collect())
        }
        "ERROR" => Err(format!("identd error: {}", f.next().unwrap_or("").trim())),
        _ => Err("unreadable identd reply".into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replies() {
        assert_eq!(super::parse("6191 , 23 : USERID : UNIX : stjohns\r\n", 6191, 23), Ok("stjohns".into()));
        assert_eq!(super::parse("6191,23:USERID:UNIX,US-ASCII: a b\r\n", 6191, 23), Ok("a b".into()));
        assert!(super::parse("6191 , 23 : ERROR : NO-USER\r\n", 6191, 23).is_err());
        assert!(super::parse("6192 , 23 : USERID : UNIX : x\r\n", 6191, 23).is_err());
        assert!(super::parse("garbage", 1, 2).is_err());
    }
}
