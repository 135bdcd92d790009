//! Reading HTTP answers from parties Assay does not control (analyzed apps, model
//! providers, LLM judges) without ever holding more than a set number of bytes: an answer
//! of a gigabyte, or one that never ends, is cut where the cap says, and the rest is never
//! read.

/// An answer's body, read up to a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedBody {
    pub bytes: Vec<u8>,
    /// The answer had more than the cap; what is past it was not read.
    pub truncated: bool,
}

impl CappedBody {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// The body's first `cap` bytes. An error while reading ends the body where it broke, as
/// [`reqwest::Response::text`] would not: callers that need to tell use [`read_within`].
pub async fn read_capped(resp: reqwest::Response, cap: usize) -> CappedBody {
    read(resp, cap).await.unwrap_or_else(|(partial, _)| partial)
}

/// The whole body if it has at most `cap` bytes; `Ok` with `truncated` set if it has more;
/// the transport error if reading failed.
pub async fn read_within(
    resp: reqwest::Response,
    cap: usize,
) -> Result<CappedBody, reqwest::Error> {
    read(resp, cap).await.map_err(|(_, e)| e)
}

async fn read(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<CappedBody, (CappedBody, reqwest::Error)> {
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - bytes.len();
                if chunk.len() > room {
                    bytes.extend_from_slice(&chunk[..room]);
                    return Ok(CappedBody {
                        bytes,
                        truncated: true,
                    });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => {
                return Ok(CappedBody {
                    bytes,
                    truncated: false,
                })
            }
            Err(e) => {
                return Err((
                    CappedBody {
                        bytes,
                        truncated: false,
                    },
                    e,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, routing::get, Router};
    use futures::stream;

    /// A real server whose `/endless` answer streams 1 MiB chunks forever, and `/small` five
    /// bytes.
    async fn server() -> String {
        let app = Router::new()
            .route(
                "/endless",
                get(|| async {
                    let chunks = stream::repeat_with(|| {
                        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1 << 20]))
                    });
                    Body::from_stream(chunks)
                }),
            )
            .route("/small", get(|| async { "hello" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_cap_and_a_small_one_is_whole() {
        let url = server().await;
        let endless = reqwest::get(format!("{url}/endless")).await.unwrap();
        let body = read_within(endless, 3 << 20).await.unwrap();
        assert_eq!(body.bytes.len(), 3 << 20);
        assert!(body.truncated);
        let small = reqwest::get(format!("{url}/small")).await.unwrap();
        let body = read_capped(small, 5).await;
        assert_eq!((body.text().as_str(), body.truncated), ("hello", false));
    }
}
