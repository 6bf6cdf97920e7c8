//! Reads the daemon's API: HTTP/1.1 over TCP (the read-only API) or over a Unix socket (the
//! in-process daemon of `--standalone`), each request on its own short connection.

use std::{path::PathBuf, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{body::Bytes, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// The most a response may be: the process list with its frames is a few hundred KiB.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the daemon's API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `host:port` of the TCP API.
    Tcp(String),
    /// The path of a Unix socket serving the API.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "http://{addr}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint} did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { endpoint: String },
    #[error("{endpoint}: {message}")]
    Http { endpoint: String, message: String },
    #[error("{endpoint}{path} answered {status}: {message}")]
    Status {
        endpoint: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{endpoint}{path} did not answer with the JSON expected: {message}")]
    Json {
        endpoint: String,
        path: String,
        message: String,
    },
}

impl ClientError {
    /// Nothing listens there (as opposed to something answering wrongly).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client { endpoint }
    }

    /// `GET path`, its JSON body parsed.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let endpoint = self.endpoint.to_string();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, self.get_bytes(path))
            .await
            .map_err(|_| ClientError::Timeout {
                endpoint: endpoint.clone(),
            })??;
        serde_json::from_slice(&body).map_err(|e| ClientError::Json {
            endpoint,
            path: path.into(),
            message: e.to_string(),
        })
    }

    async fn get_bytes(&self, path: &str) -> Result<Bytes, ClientError> {
        let endpoint = self.endpoint.to_string();
        let connect_error = |source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let response = match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(connect_error)?;
                send(stream, addr, path, &endpoint).await?
            }
            Endpoint::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(connect_error)?;
                send(stream, "localhost", path, &endpoint).await?
            }
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                endpoint: endpoint.clone(),
                message: format!("cannot read the answer to {path}: {e}"),
            })?
            .to_bytes();
        if !status.is_success() {
            #[derive(serde::Deserialize)]
            struct ErrorBody {
                error: String,
            }
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(ClientError::Status {
                endpoint,
                path: path.into(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }
}

/// Sends one GET on a fresh connection.
async fn send<S>(
    stream: S,
    host: &str,
    path: &str,
    endpoint: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |e: hyper::Error| ClientError::Http {
        endpoint: endpoint.to_string(),
        message: e.to_string(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Http {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
    sender.send_request(request).await.map_err(http_error)
}
