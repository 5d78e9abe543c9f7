//! A minimal protobuf reader, to check what the encoder wrote.

/// One decoded field value.
#[derive(Clone, Copy, Debug)]
pub(super) enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

pub(super) fn read_varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
    }
    v
}

/// The fields of one message, in order.
pub(super) fn fields(b: &[u8]) -> Vec<(u32, Value<'_>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = read_varint(b, &mut pos);
        let value = match key & 7 {
            0 => Value::Varint(read_varint(b, &mut pos)),
            2 => {
                let n = read_varint(b, &mut pos) as usize;
                pos += n;
                Value::Bytes(&b[pos - n..pos])
            }
            5 => {
                pos += 4;
                Value::Fixed32(u32::from_le_bytes(b[pos - 4..pos].try_into().unwrap()))
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push(((key >> 3) as u32, value));
    }
    assert_eq!(pos, b.len(), "a field runs past the end of its message");
    out
}

pub(super) fn varints(b: &[u8], field: u32) -> Vec<u64> {
    fields(b)
        .into_iter()
        .filter_map(|(f, v)| match (f == field, v) {
            (true, Value::Varint(x)) => Some(x),
            _ => None,
        })
        .collect()
}

pub(super) fn messages(b: &[u8], field: u32) -> Vec<&[u8]> {
    fields(b)
        .into_iter()
        .filter_map(|(f, v)| match (f == field, v) {
            (true, Value::Bytes(x)) => Some(x),
            _ => None,
        })
        .collect()
}

pub(super) fn string(b: &[u8], field: u32) -> String {
    String::from_utf8(messages(b, field)[0].to_vec()).unwrap()
}

/// A model's IR version, opset, and its nodes' op types.
pub(super) fn summary(model: &[u8]) -> (u64, u64, Vec<String>) {
    let ir = varints(model, 1)[0];
    let opset = varints(messages(model, 8)[0], 2)[0];
    let graph = messages(model, 7)[0];
    let ops = messages(graph, 1).iter().map(|n| string(n, 4)).collect();
    (ir, opset, ops)
}
