//! A hand-written encoder for the few ONNX protobuf messages a classifier needs.
//!
//! Protobuf's wire format: each field is a key `(field_number << 3) | wire_type` as a varint,
//! then its value: a varint (wire type 0), 4 little-endian bytes (wire type 5) or a varint length
//! and that many bytes (wire type 2: strings, bytes, embedded messages). `onnx.proto` is proto2,
//! so repeated scalars are written unpacked (one key per element), as onnx's own serializer does.
//!
//! Field numbers are those of <https://github.com/onnx/onnx/blob/main/onnx/onnx.proto>.

/// Wire type of varint-encoded integers.
const WIRE_VARINT: u64 = 0;
/// Wire type of length-delimited values (strings, bytes, messages).
const WIRE_LEN: u64 = 2;
/// Wire type of 32-bit fixed-width values (`float`).
const WIRE_FIXED32: u64 = 5;

/// Appends `v` as a base-128 varint: 7 bits per byte, least significant first, the high bit
/// set on every byte but the last.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The bytes of one protobuf message under construction.
#[derive(Clone, Debug, Default)]
pub struct Message {
    buf: Vec<u8>,
}

impl Message {
    pub fn new() -> Message {
        Message::default()
    }

    fn key(&mut self, field: u32, wire: u64) {
        put_varint(&mut self.buf, (u64::from(field) << 3) | wire);
    }

    /// An `int64`/`int32`/enum field; negative values take ten bytes (two's complement), as
    /// protobuf encodes them.
    pub fn int(&mut self, field: u32, v: i64) -> &mut Message {
        self.key(field, WIRE_VARINT);
        put_varint(&mut self.buf, v as u64);
        self
    }

    /// A `float` field.
    pub fn float(&mut self, field: u32, v: f32) -> &mut Message {
        self.key(field, WIRE_FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Message {
        self.key(field, WIRE_LEN);
        put_varint(&mut self.buf, b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, s: &str) -> &mut Message {
        self.bytes(field, s.as_bytes())
    }

    /// An embedded message field.
    pub fn message(&mut self, field: u32, m: &Message) -> &mut Message {
        self.bytes(field, &m.buf)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// `TensorProto.DataType` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Int8 = 3,
    Int64 = 7,
    Int4 = 22,
}

/// An initializer (`TensorProto`) with its values as `raw_data` (little-endian, INT4 packed two
/// per byte, low nibble first).
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: DataType,
    pub raw: Vec<u8>,
}

impl Tensor {
    fn encode(&self) -> Message {
        let mut m = Message::new();
        for &d in &self.dims {
            m.int(1, d);
        }
        m.int(2, self.data_type as i64)
            .string(8, &self.name)
            .bytes(9, &self.raw);
        m
    }
}

/// A node attribute's value (`AttributeProto`).
#[derive(Clone, Debug)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    Ints(Vec<i64>),
}

/// One node (`NodeProto`) in the default (`ai.onnx`) domain.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op_type: &'static str,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

impl Node {
    fn encode(&self) -> Message {
        let mut m = Message::new();
        for i in &self.inputs {
            m.string(1, i);
        }
        for o in &self.outputs {
            m.string(2, o);
        }
        m.string(3, &self.name).string(4, self.op_type);
        for (name, value) in &self.attributes {
            let mut a = Message::new();
            a.string(1, name);
            match value {
                AttrValue::Float(f) => a.float(2, *f).int(20, 1),
                AttrValue::Int(i) => a.int(3, *i).int(20, 2),
                AttrValue::Ints(v) => {
                    for &i in v {
                        a.int(8, i);
                    }
                    a.int(20, 7)
                }
            };
            m.message(5, &a);
        }
        m
    }
}

/// One dimension of a graph input's or output's shape.
#[derive(Clone, Debug)]
pub enum Dim {
    Value(i64),
    /// A symbolic dimension, such as the batch size.
    Param(&'static str),
}

/// A float graph input or output (`ValueInfoProto` of a tensor type).
#[derive(Clone, Debug)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: DataType,
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    fn encode(&self) -> Message {
        let mut shape = Message::new();
        for d in &self.dims {
            let mut dim = Message::new();
            match d {
                Dim::Value(v) => dim.int(1, *v),
                Dim::Param(p) => dim.string(2, p),
            };
            shape.message(1, &dim);
        }
        let mut tensor = Message::new();
        tensor.int(1, self.elem_type as i64).message(2, &shape);
        let mut ty = Message::new();
        ty.message(1, &tensor);
        let mut m = Message::new();
        m.string(1, &self.name).message(2, &ty);
        m
    }
}

/// A whole model: `ModelProto` with one `GraphProto` and one opset import (the default domain).
#[derive(Clone, Debug)]
pub struct Model {
    pub ir_version: i64,
    pub opset: i64,
    pub producer_name: &'static str,
    pub producer_version: &'static str,
    pub graph_name: &'static str,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Model {
    /// The serialized `ModelProto`.
    pub fn encode(&self) -> Vec<u8> {
        let mut graph = Message::new();
        for n in &self.nodes {
            graph.message(1, &n.encode());
        }
        graph.string(2, self.graph_name);
        for t in &self.initializers {
            graph.message(5, &t.encode());
        }
        for i in &self.inputs {
            graph.message(11, &i.encode());
        }
        for o in &self.outputs {
            graph.message(12, &o.encode());
        }
        let mut opset = Message::new();
        opset.string(1, "").int(2, self.opset);
        let mut model = Message::new();
        model
            .int(1, self.ir_version)
            .string(2, self.producer_name)
            .string(3, self.producer_version)
            .message(7, &graph)
            .message(8, &opset);
        model.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    #[test]
    fn varints_follow_the_protobuf_examples() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(150), [0x96, 0x01]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(u64::MAX).len(), 10);
    }

    #[test]
    fn fields_carry_their_keys() {
        let mut m = Message::new();
        // Field 1 = 150: the example of the protobuf encoding guide.
        m.int(1, 150);
        assert_eq!(m.clone().into_bytes(), [0x08, 0x96, 0x01]);
        // -1 as int64: ten bytes, all high bits set but the last.
        let mut m = Message::new();
        m.int(3, -1);
        let b = m.into_bytes();
        assert_eq!(b[0], 3 << 3);
        assert_eq!(
            &b[1..],
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        // Field 2 = "testing": key 0x12, length 7.
        let mut m = Message::new();
        m.string(2, "testing");
        assert_eq!(m.into_bytes(), b"\x12\x07testing");
        // A float: key (2 << 3) | 5, then the little-endian bits.
        let mut m = Message::new();
        m.float(2, 1.0);
        assert_eq!(m.into_bytes(), [0x15, 0x00, 0x00, 0x80, 0x3f]);
        // Field 20 needs a two-byte key.
        let mut m = Message::new();
        m.int(20, 7);
        assert_eq!(m.into_bytes(), [0xa0, 0x01, 0x07]);
    }
}
