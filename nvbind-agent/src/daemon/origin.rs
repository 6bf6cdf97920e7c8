//! Who may read the TCP API from a browser. Any page a local user opens can make their browser
//! send requests to 127.0.0.1:9090, and a site whose name it re-points at 127.0.0.1 (DNS
//! rebinding) can then read the answers as its own; a WebSocket is not bound by the browser's
//! same-origin rule at all. So every request on the TCP listener must name this host in `Host`
//! (an address, `localhost`, this machine's host name or a name in `api.allowed_hosts`), and a
//! request that carries an `Origin` (every browser WebSocket and cross-site request does) must
//! come from the page of that same host. Clients that are not browsers (curl, Prometheus, `top`)
//! send no Origin and are unaffected; a request with no `Host` at all comes from no browser.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::shared::{ApiError, Shared};

/// Refuses requests whose `Host` or `Origin` says a browser sent them for another site.
pub async fn same_host_only(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = shared.allowed_hosts();
    match check(request.headers(), &allowed, &crate::capture::hostname()) {
        Ok(()) => next.run(request).await,
        Err(why) => ApiError::new(StatusCode::FORBIDDEN, why).into_response(),
    }
}

/// Checks a request's `Host` and `Origin` against the names this host answers to.
fn check(headers: &HeaderMap, allowed: &[String], host_name: &str) -> Result<(), String> {
    let Some(host) = headers.get(header::HOST) else {
        return Ok(());
    };
    let host = host
        .to_str()
        .map_err(|_| "the Host header is not text".to_string())?;
    if !names_this_host(host, allowed, host_name) {
        return Err(format!(
            "Host {host:?} does not name this machine (a page of another site may be \
             reaching the API through DNS rebinding): open http://127.0.0.1:PORT/, or add the \
             name to api.allowed_hosts in the agent's config"
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "the Origin header is not text".to_string())?;
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .filter(|rest| !rest.contains('/'));
    match origin_host {
        Some(origin_host) if origin_host.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(format!(
            "a page of {origin:?} may not read the API of {host:?}: only the agent's own page \
             (http://{host}/) may"
        )),
    }
}

/// Whether `host` (a `Host` header: a name or address, and maybe a port) is one this machine
/// answers to: any IP address (a browser only sends one when it was asked for that address),
/// `localhost`, the machine's host name or a configured name.
fn names_this_host(host: &str, allowed: &[String], host_name: &str) -> bool {
    let name = without_port(host);
    if name.is_empty() {
        return false;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || (!host_name.is_empty() && name.eq_ignore_ascii_case(host_name))
        || allowed
            .iter()
            .any(|a| without_port(a).eq_ignore_ascii_case(name) || a.eq_ignore_ascii_case(host))
}

/// `host` without its `:port` (an IPv6 address keeps its brackets).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        h
    }

    #[test]
    fn addresses_localhost_and_this_machines_names_are_served() {
        let allowed = vec!["gamebox.lan".to_string()];
        for host in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "[::1]:9090",
            "localhost:9090",
            "LOCALHOST.:9090",
            "10.1.2.3:9090",
            "rig:9090",
            "gamebox.lan:9090",
        ] {
            assert_eq!(
                check(&headers(Some(host), None), &allowed, "rig"),
                Ok(()),
                "{host}"
            );
        }
        assert_eq!(check(&headers(None, None), &allowed, "rig"), Ok(()));
    }

    #[test]
    fn another_sites_name_is_refused_with_the_fix() {
        for host in [
            "evil.example:9090",
            "127.0.0.1.evil.example",
            "localhost.evil",
            ":9090",
        ] {
            let why = check(&headers(Some(host), None), &[], "rig").unwrap_err();
            assert!(why.contains("api.allowed_hosts"), "{host}: {why}");
        }
    }

    #[test]
    fn only_the_agents_own_page_may_send_an_origin() {
        let host = Some("127.0.0.1:9090");
        assert_eq!(
            check(&headers(host, Some("http://127.0.0.1:9090")), &[], ""),
            Ok(())
        );
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:8080",
            "null",
            "http://127.0.0.1:9090/x",
            "file://",
        ] {
            let why = check(&headers(host, Some(origin)), &[], "").unwrap_err();
            assert!(why.contains("may not read"), "{origin}: {why}");
        }
    }
}
