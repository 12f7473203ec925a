//! VERSION negotiation (spec "VFIO_USER_VERSION"), both sides. No I/O.
//!
//! Rules the server follows, all verified against QEMU's `vfio_user_validate_version`:
//! the reply has major 0 and a minor no greater than the request's; the JSON is
//! NUL-terminated; the reply is **no longer than the request** (QEMU receives it into the
//! request's buffer and rejects anything larger), so capabilities are dropped, least important
//! first, until they fit; and only capabilities the client proposed are returned (the spec's
//! "subset of those proposed").

use serde_json::{Map, Value};
use zerocopy::IntoBytes;

use crate::wire::Version;

/// Protocol major version spoken.
pub const MAJOR: u16 = 0;
/// Highest minor version spoken. Requests for a higher minor get this one back.
pub const MINOR: u16 = 0;

/// Our capabilities (what the server advertises / the client proposes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Descriptors we can receive in one message.
    pub max_msg_fds: u32,
    /// Largest data count of one REGION/DMA read or write.
    pub max_data_xfer_size: u32,
    /// DMA page sizes, or'ed.
    pub pgsizes: u64,
    /// Simultaneous DMA mappings.
    pub max_dma_maps: u32,
    /// REGION_WRITE_MULTI supported.
    pub write_multiple: bool,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_msg_fds: 16,
            max_data_xfer_size: 1 << 20,
            pgsizes: 4096,
            max_dma_maps: 65535,
            write_multiple: true,
        }
    }
}

/// Capabilities a peer announced, with the spec's defaults for what it left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCaps {
    /// Spec default 1 (QEMU assumes 8 when a server omits it; we follow the spec).
    pub max_msg_fds: u32,
    pub max_data_xfer_size: u32,
    pub pgsizes: u64,
    pub max_dma_maps: u32,
    pub write_multiple: bool,
}

impl Default for PeerCaps {
    fn default() -> Self {
        Self {
            max_msg_fds: 1,
            max_data_xfer_size: 1 << 20,
            pgsizes: 4096,
            max_dma_maps: 65535,
            write_multiple: false,
        }
    }
}

/// Why a VERSION message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("VERSION body is {0} bytes, shorter than major+minor")]
    TooShort(usize),
    #[error("major version {0} is not supported (only 0)")]
    Major(u16),
    #[error("minor version {got} is newer than the {max} we asked for")]
    Minor { got: u16, max: u16 },
    #[error("version JSON is not NUL-terminated")]
    NotTerminated,
    #[error("version JSON is malformed: {0}")]
    Json(String),
    #[error("capability {0} has the wrong type or range")]
    BadCap(&'static str),
}

/// A parsed VERSION message (request or reply).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionMsg {
    pub major: u16,
    pub minor: u16,
    /// Bytes of JSON including the terminating NUL (0 when absent).
    pub json_len: usize,
    /// Keys present under `capabilities`.
    pub cap_keys: Vec<String>,
    pub caps: PeerCaps,
}

/// Parse a VERSION body (request or reply).
pub fn parse(body: &[u8]) -> Result<VersionMsg, VersionError> {
    let (v, rest) = crate::wire::split_body::<Version>(crate::wire::Command::VERSION, body)
        .map_err(|_| VersionError::TooShort(body.len()))?;
    let mut msg = VersionMsg {
        major: v.major,
        minor: v.minor,
        json_len: rest.len(),
        cap_keys: Vec::new(),
        caps: PeerCaps::default(),
    };
    if rest.is_empty() {
        return Ok(msg);
    }
    let Some((&0, text)) = rest.split_last() else {
        return Err(VersionError::NotTerminated);
    };
    // Bytes after an embedded NUL would be ignored by C peers; refuse them.
    if text.contains(&0) {
        return Err(VersionError::Json("embedded NUL".into()));
    }
    let value: Value =
        serde_json::from_slice(text).map_err(|e| VersionError::Json(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(VersionError::Json("not an object".into()));
    };
    let Some(caps) = top.get("capabilities") else {
        return Ok(msg);
    };
    let Value::Object(caps) = caps else {
        return Err(VersionError::BadCap("capabilities"));
    };
    msg.cap_keys = caps.keys().cloned().collect();
    let num = |k: &'static str| -> Result<Option<u64>, VersionError> {
        match caps.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(VersionError::BadCap(k)),
        }
    };
    let u32cap = |k: &'static str| -> Result<Option<u32>, VersionError> {
        num(k)?
            .map(|v| u32::try_from(v).map_err(|_| VersionError::BadCap(k)))
            .transpose()
    };
    if let Some(v) = u32cap("max_msg_fds")? {
        msg.caps.max_msg_fds = v;
    }
    if let Some(v) = u32cap("max_data_xfer_size")? {
        msg.caps.max_data_xfer_size = v;
    }
    if let Some(v) = num("pgsizes")? {
        msg.caps.pgsizes = v;
    }
    if let Some(v) = u32cap("max_dma_maps")? {
        msg.caps.max_dma_maps = v;
    }
    match caps.get("write_multiple") {
        None => {}
        Some(Value::Bool(b)) => msg.caps.write_multiple = *b,
        Some(_) => return Err(VersionError::BadCap("write_multiple")),
    }
    Ok(msg)
}

/// The JSON a client proposes (QEMU's shape, without migration).
pub fn proposal_json(ours: &Caps) -> String {
    let caps = caps_object(ours, None);
    Value::Object(Map::from_iter([(
        "capabilities".to_string(),
        Value::Object(caps),
    )]))
    .to_string()
}

fn caps_object(ours: &Caps, only: Option<&[String]>) -> Map<String, Value> {
    // Most important first: dropping from the end when the reply must shrink.
    let all: [(&str, Value); 5] = [
        ("max_msg_fds", ours.max_msg_fds.into()),
        ("max_data_xfer_size", ours.max_data_xfer_size.into()),
        ("pgsizes", ours.pgsizes.into()),
        ("max_dma_maps", ours.max_dma_maps.into()),
        ("write_multiple", ours.write_multiple.into()),
    ];
    let mut m = Map::new();
    for (k, v) in all {
        if only.is_none_or(|keys| keys.iter().any(|x| x == k)) {
            m.insert(k.to_string(), v);
        }
    }
    m
}

/// Build the server's VERSION reply body for a parsed request: major/minor followed by
/// NUL-terminated JSON no longer than the request's JSON (none if the request had none).
pub fn server_reply(req: &VersionMsg, ours: &Caps) -> Result<Vec<u8>, VersionError> {
    if req.major != MAJOR {
        return Err(VersionError::Major(req.major));
    }
    // Reply minor = min(request, ours); ours is 0, the lowest possible.
    let v = Version {
        major: MAJOR,
        minor: MINOR,
    };
    let mut body = v.as_bytes().to_vec();
    if req.json_len == 0 {
        return Ok(body);
    }
    let mut keys: Vec<(String, Value)> =
        caps_object(ours, Some(&req.cap_keys)).into_iter().collect();
    loop {
        let caps = Map::from_iter(keys.iter().cloned());
        let text = Value::Object(Map::from_iter([(
            "capabilities".to_string(),
            Value::Object(caps),
        )]))
        .to_string();
        if text.len() < req.json_len {
            body.extend_from_slice(text.as_bytes());
            body.push(0);
            return Ok(body);
        }
        if keys.pop().is_none() {
            break;
        }
    }
    // Even `{"capabilities":{}}` does not fit: fall back to the shortest valid JSON.
    if req.json_len >= 3 {
        body.extend_from_slice(b"{}\0");
    } else {
        body.push(0);
    }
    Ok(body)
}

/// Client side: check the server's reply against what we sent.
pub fn check_reply(reply: &VersionMsg, sent_minor: u16) -> Result<(), VersionError> {
    if reply.major != MAJOR {
        return Err(VersionError::Major(reply.major));
    }
    if reply.minor > sent_minor {
        return Err(VersionError::Minor {
            got: reply.minor,
            max: sent_minor,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_JSON: &str = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;

    fn request(major: u16, minor: u16, json: Option<&str>) -> Vec<u8> {
        let mut b = Version { major, minor }.as_bytes().to_vec();
        if let Some(j) = json {
            b.extend_from_slice(j.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn qemu_request_gets_reply_no_longer_than_its_json() {
        let req = parse(&request(0, 0, Some(QEMU_JSON))).expect("parses");
        assert_eq!(req.caps.max_msg_fds, 16);
        assert!(req.caps.write_multiple);
        let reply = server_reply(&req, &Caps::default()).expect("reply");
        assert!(reply.len() <= request(0, 0, Some(QEMU_JSON)).len());
        assert_eq!(*reply.last().expect("nonempty"), 0);
        let parsed = parse(&reply).expect("reply parses");
        assert_eq!((parsed.major, parsed.minor), (0, 0));
        assert_eq!(parsed.caps.max_msg_fds, 16);
        assert_eq!(parsed.caps.max_data_xfer_size, 1 << 20);
        assert!(parsed.caps.write_multiple);
        assert!(!parsed.cap_keys.iter().any(|k| k == "migration"));
    }

    #[test]
    fn minor_one_request_gets_minor_zero_reply() {
        let req = parse(&request(0, 1, Some(QEMU_JSON))).expect("parses");
        let reply = parse(&server_reply(&req, &Caps::default()).expect("reply")).expect("parses");
        assert_eq!(reply.minor, 0);
        check_reply(&reply, 1).expect("client accepts");
    }

    #[test]
    fn short_request_json_shrinks_reply_caps_to_fit() {
        let j = r#"{"capabilities":{"max_msg_fds":4,"max_data_xfer_size":4096,"pgsizes":4096}}"#;
        let req = parse(&request(0, 0, Some(j))).expect("parses");
        let reply = server_reply(&req, &Caps::default()).expect("reply");
        assert!(
            reply.len() - 4 <= j.len() + 1,
            "reply json {} > request json {}",
            reply.len() - 4,
            j.len() + 1
        );
        let parsed = parse(&reply).expect("parses");
        assert!(parsed.cap_keys.len() <= 3);
        let tiny = parse(&request(0, 0, Some("{}"))).expect("parses");
        let r = server_reply(&tiny, &Caps::default()).expect("reply");
        assert_eq!(&r[4..], b"{}\0");
    }

    #[test]
    fn request_without_json_gets_reply_without_json() {
        let req = parse(&request(0, 0, None)).expect("parses");
        assert_eq!(
            server_reply(&req, &Caps::default()).expect("reply").len(),
            4
        );
    }

    #[test]
    fn malformed_version_bodies_are_refused() {
        assert_eq!(parse(&[0, 0]), Err(VersionError::TooShort(2)));
        let mut unterminated = request(0, 0, None);
        unterminated.extend_from_slice(b"{}");
        assert_eq!(parse(&unterminated), Err(VersionError::NotTerminated));
        assert!(matches!(
            parse(&request(0, 0, Some("[1]"))),
            Err(VersionError::Json(_))
        ));
        assert!(matches!(
            parse(&request(
                0,
                0,
                Some(r#"{"capabilities":{"max_msg_fds":-1}}"#)
            )),
            Err(VersionError::BadCap("max_msg_fds"))
        ));
        let req = parse(&request(1, 0, None)).expect("parses");
        assert_eq!(
            server_reply(&req, &Caps::default()),
            Err(VersionError::Major(1))
        );
    }
}
