//! Make the kubelet's gRPC requests acceptable to our HTTP/2 server.
//!
//! The kubelet dials plugin sockets with `grpc.DialContext(socketPath, ...)`, so grpc-go sends
//! the socket path (`/var/lib/kubelet/plugins_registry/...sock`) as the HTTP/2 `:authority`.
//! The `h2` crate under tonic refuses an authority containing `/` and resets the stream with
//! PROTOCOL_ERROR, so a real kubelet could never register us (our own Rust and `unix://` Go
//! clients send `localhost` and never saw it).
//!
//! Each accepted connection therefore passes through [`relay`]: client-to-server frames are
//! copied unchanged except HEADERS/CONTINUATION header blocks, which are HPACK-decoded with a
//! decoder that mirrors the client's encoder, get `:authority` replaced by `localhost` when it
//! is not a valid authority, and are re-encoded with an encoder that the server's decoder
//! mirrors. Server-to-client bytes are copied unchanged. Every length is bounded.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest frame we accept or emit (the HTTP/2 default SETTINGS_MAX_FRAME_SIZE).
pub(crate) const MAX_FRAME: usize = 16_384;
/// Largest header block we reassemble.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Why a relayed connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("client did not send the HTTP/2 preface")]
    Preface,
    #[error("frame of {0} bytes exceeds {MAX_FRAME}")]
    FrameTooLarge(usize),
    #[error("header block exceeds {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("malformed HEADERS frame")]
    MalformedHeaders,
    #[error("HPACK decoding failed: {0}")]
    Hpack(String),
    #[error("decoded header list exceeds {MAX_HEADER_LIST} bytes")]
    HeaderListTooLarge,
}

/// Whether `value` is a plain `host[:port]` authority that `h2` accepts. grpc-go sends the
/// socket path percent-encoded (`%2Fvar%2Flib%2F...`), which `h2` refuses as well.
fn valid_authority(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

/// Largest decoded header list we accept (names + values + 32 bytes per field, RFC 7541
/// §4.1): bounds memory when a small block references large table entries many times.
const MAX_HEADER_LIST: usize = 256 * 1024;
/// HPACK dynamic table size the server side advertises (the HTTP/2 default); a correct client
/// never references entries beyond it.
const HEADER_TABLE_SIZE: usize = 4096;

/// Rewrite one complete header block.
fn rewrite_block(
    decoder: &mut hpack::Decoder<'_>,
    encoder: &mut hpack::Encoder<'_>,
    block: &[u8],
) -> Result<Vec<u8>, RelayError> {
    let mut fixed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut total = 0usize;
    let decoded = decoder.decode_with_cb(block, |name, value| {
        total = total.saturating_add(name.len() + value.len() + 32);
        if total > MAX_HEADER_LIST {
            return;
        }
        let value = if &name[..] == b":authority" && !valid_authority(&value) {
            b"localhost".to_vec()
        } else {
            value.into_owned()
        };
        fixed.push((name.into_owned(), value));
    });
    // The decoder honours any table-size update a client sends; clamp it back after every
    // block so a peer cannot grow the table without bound across blocks.
    decoder.set_max_table_size(HEADER_TABLE_SIZE);
    decoded.map_err(|e| RelayError::Hpack(format!("{e:?}")))?;
    if total > MAX_HEADER_LIST {
        return Err(RelayError::HeaderListTooLarge);
    }
    Ok(encoder.encode(fixed.iter().map(|(n, v)| (&n[..], &v[..]))))
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let l = (len as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
}

/// Copy client-to-server, rewriting header blocks; returns when the client closes.
pub(crate) async fn client_to_server<R, W>(mut from: R, mut to: W) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    if preface != PREFACE {
        return Err(RelayError::Preface);
    }
    to.write_all(&preface).await?;
    let mut decoder = hpack::Decoder::new();
    let mut encoder = hpack::Encoder::new();
    // A header block being reassembled: stream, END_STREAM flag, priority bytes, fragments.
    let mut pending: Option<(u32, u8, Vec<u8>, Vec<u8>)> = None;
    loop {
        let mut head = [0u8; 9];
        match from.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        if len > MAX_FRAME {
            return Err(RelayError::FrameTooLarge(len));
        }
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await?;
        let fragment = match kind {
            TYPE_HEADERS => {
                let mut body = &payload[..];
                let mut pad = 0usize;
                if flags & FLAG_PADDED != 0 {
                    pad = usize::from(*body.first().ok_or(RelayError::MalformedHeaders)?);
                    body = &body[1..];
                }
                let mut priority = Vec::new();
                if flags & FLAG_PRIORITY != 0 {
                    priority = body.get(..5).ok_or(RelayError::MalformedHeaders)?.to_vec();
                    body = &body[5..];
                }
                let end = body
                    .len()
                    .checked_sub(pad)
                    .ok_or(RelayError::MalformedHeaders)?;
                pending = Some((stream, flags & FLAG_END_STREAM, priority, Vec::new()));
                body[..end].to_vec()
            }
            TYPE_CONTINUATION if pending.is_some() => payload,
            _ => {
                to.write_all(&head).await?;
                to.write_all(&payload).await?;
                continue;
            }
        };
        if let Some((_, _, _, block)) = pending.as_mut() {
            block.extend_from_slice(&fragment);
            if block.len() > MAX_HEADER_BLOCK {
                return Err(RelayError::HeaderBlockTooLarge);
            }
        }
        if flags & FLAG_END_HEADERS == 0 {
            continue;
        }
        let Some((stream, end_stream, priority, block)) = pending.take() else {
            continue;
        };
        let rewritten = rewrite_block(&mut decoder, &mut encoder, &block)?;
        // HEADERS (with priority if it had one), then CONTINUATIONs, END_HEADERS on the last.
        let first_room = MAX_FRAME - priority.len();
        let (first, mut rest) = rewritten.split_at(rewritten.len().min(first_room));
        let mut first_flags = end_stream
            | if priority.is_empty() {
                0
            } else {
                FLAG_PRIORITY
            };
        if rest.is_empty() {
            first_flags |= FLAG_END_HEADERS;
        }
        to.write_all(&frame_header(
            priority.len() + first.len(),
            TYPE_HEADERS,
            first_flags,
            stream,
        ))
        .await?;
        to.write_all(&priority).await?;
        to.write_all(first).await?;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            let f = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            to.write_all(&frame_header(chunk.len(), TYPE_CONTINUATION, f, stream))
                .await?;
            to.write_all(chunk).await?;
            rest = tail;
        }
    }
    to.shutdown().await?;
    Ok(())
}

/// Relay one accepted client connection to the in-process server end `server`.
pub async fn relay(client: tokio::net::UnixStream, server: tokio::net::UnixStream) {
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, server_write) = server.into_split();
    let upstream = client_to_server(client_read, server_write);
    let downstream = async {
        let r = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
        r
    };
    let (up, _down) = tokio::join!(upstream, downstream);
    if let Err(e) = up {
        tracing::debug!(error = %e, "gRPC connection relay ended");
    }
}

/// An incoming-connection stream for tonic: every connection accepted on `listener` is
/// relayed (see the module docs) to one end of a fresh socket pair whose other end is yielded.
pub fn incoming(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await;
            let item = match accepted {
                Ok((client, _)) => match tokio::net::UnixStream::pair() {
                    Ok((ours, theirs)) => {
                        tokio::spawn(relay(client, ours));
                        Ok(theirs)
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_are_not_authorities_and_hosts_are() {
        assert!(!valid_authority(
            b"/var/lib/kubelet/plugins_registry/x-reg.sock"
        ));
        assert!(!valid_authority(b"%2Fvar%2Flib%2Fkubelet%2Fx-reg.sock"));
        assert!(!valid_authority(b""));
        assert!(valid_authority(b"localhost"));
        assert!(valid_authority(b"127.0.0.1:8080"));
    }

    #[test]
    fn authority_is_replaced_and_other_headers_survive_across_blocks() {
        let mut client_enc = hpack::Encoder::new();
        let mut dec = hpack::Decoder::new();
        let mut enc = hpack::Encoder::new();
        let mut server_dec = hpack::Decoder::new();
        for _ in 0..3 {
            let block = client_enc.encode(vec![
                (&b":method"[..], &b"POST"[..]),
                (b":authority", b"/run/plugins_registry/drv-reg.sock"),
                (b":path", b"/pluginregistration.Registration/GetInfo"),
                (b"te", b"trailers"),
            ]);
            let out = rewrite_block(&mut dec, &mut enc, &block).expect("rewrite");
            let headers = server_dec.decode(&out).expect("server decodes");
            assert_eq!(headers[1], (b":authority".to_vec(), b"localhost".to_vec()));
            assert_eq!(
                headers[2].1,
                b"/pluginregistration.Registration/GetInfo".to_vec()
            );
            assert_eq!(headers.len(), 4);
        }
    }

    #[test]
    fn rustsec_2023_0085_input_is_an_error_not_a_panic() {
        // hpack 0.3.0 panicked on these (RUSTSEC-2023-0085 and a fuzzer find in dra_relay).
        let mut dec = hpack::Decoder::new();
        let mut enc = hpack::Encoder::new();
        assert!(rewrite_block(&mut dec, &mut enc, &[0x3f]).is_err());
        let crash = [
            0x3f, 0xe1, 0x1f, 0x00, 0x07, b':', b'm', b'e', b't', 0xa8, b'h', b'o',
        ];
        let _ = rewrite_block(&mut dec, &mut enc, &crash);
    }

    #[test]
    fn header_list_amplification_is_refused() {
        // One literal with incremental indexing of 4000 bytes, then 100 one-byte references to
        // it: 4 KB of input decoding to 400 KB of headers.
        let mut block = vec![0x40, 0x01, b'x', 0x7f];
        let mut n = 4000 - 127;
        while n >= 128 {
            block.push(0x80 | (n % 128) as u8);
            n /= 128;
        }
        block.push(n as u8);
        block.extend(std::iter::repeat_n(b'y', 4000));
        block.extend(std::iter::repeat_n(0x80 | 62, 100));
        let mut dec = hpack::Decoder::new();
        let mut enc = hpack::Encoder::new();
        assert!(matches!(
            rewrite_block(&mut dec, &mut enc, &block),
            Err(RelayError::HeaderListTooLarge)
        ));
    }

    #[test]
    fn garbage_header_block_is_an_error_not_a_panic() {
        let mut dec = hpack::Decoder::new();
        let mut enc = hpack::Encoder::new();
        assert!(rewrite_block(&mut dec, &mut enc, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
