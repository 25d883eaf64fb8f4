//! A minimal pickle writer: just the opcodes a Detectron2 checkpoint needs.
//!
//! Written by hand because no maintained crate writes numpy arrays: `serde-pickle`
//! serialises plain data (dicts, strings, numbers, bytes) but cannot emit the
//! GLOBAL/REDUCE calls that rebuild an `ndarray` on the Python side.
//!
//! Each array is rebuilt from public numpy functions only,
//! `numpy.reshape(numpy.frombuffer(bytearray(raw), "<f4"), shape)`, instead of numpy's
//! own `numpy.core.multiarray._reconstruct` recipe: `numpy.core` became `numpy._core`
//! in numpy 2 (a pickle naming either one needs a shim on the other side), while
//! `reshape`/`frombuffer` exist unchanged in numpy 1.x and 2.x. The `bytearray` copy
//! makes the arrays writable, so `torch.from_numpy` takes them without a warning.
//!
//! Protocol 3 is the oldest with a bytes opcode (BINBYTES); protocol 2 could only carry
//! raw data as a Python 2 `str`, which Detectron2's `pickle.load(f, encoding="latin1")`
//! would turn into text.

use std::collections::HashMap;

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const EMPTY_DICT: u8 = b'}';
const SETITEMS: u8 = b'u';
const BINUNICODE: u8 = b'X';
const BINBYTES: u8 = b'B';
const NEWTRUE: u8 = 0x88;
const GLOBAL: u8 = b'c';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const REDUCE: u8 = b'R';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const BININT1: u8 = b'K';
const BININT: u8 = b'J';

pub const PROTOCOL: u8 = 3;

/// A Python value this writer can emit.
#[derive(Clone, Debug)]
pub enum Value<'a> {
    Str(&'a str),
    True,
    /// A float32 C-order array: little-endian raw bytes and its shape.
    F32Array {
        data: &'a [u8],
        shape: &'a [usize],
    },
    /// A dict, keys in insertion order (Python keeps that order).
    Dict(Vec<(&'a str, Value<'a>)>),
}

/// Serialises `value` as one pickle (protocol 3).
pub fn to_bytes(value: &Value<'_>) -> Vec<u8> {
    let mut w = Writer {
        out: vec![PROTO, PROTOCOL],
        memo: HashMap::new(),
    };
    w.value(value);
    w.out.push(STOP);
    w.out
}

struct Writer {
    out: Vec<u8>,
    /// Memo slots of the globals already emitted, so each is named once.
    memo: HashMap<String, u32>,
}

impl Writer {
    fn value(&mut self, v: &Value<'_>) {
        match v {
            Value::Str(s) => self.str(s),
            Value::True => self.out.push(NEWTRUE),
            Value::F32Array { data, shape } => self.f32_array(data, shape),
            Value::Dict(items) => {
                self.out.push(EMPTY_DICT);
                if items.is_empty() {
                    return;
                }
                self.out.push(MARK);
                for (k, v) in items {
                    self.str(k);
                    self.value(v);
                }
                self.out.push(SETITEMS);
            }
        }
    }

    fn str(&mut self, s: &str) {
        self.out.push(BINUNICODE);
        self.len_u32(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn len_u32(&mut self, n: usize) {
        let n = u32::try_from(n).expect("pickle protocol 3 strings and bytes are below 4 GiB");
        self.out.extend_from_slice(&n.to_le_bytes());
    }

    fn int(&mut self, n: usize) {
        if let Ok(b) = u8::try_from(n) {
            self.out.extend_from_slice(&[BININT1, b]);
        } else {
            let n = i32::try_from(n).expect("array dimension fits in i32");
            self.out.push(BININT);
            self.out.extend_from_slice(&n.to_le_bytes());
        }
    }

    /// Pushes `module.name`: a GLOBAL the first time (stored in the memo), a GET after.
    fn global(&mut self, module: &str, name: &str) {
        let qualified = format!("{module}.{name}");
        if let Some(&slot) = self.memo.get(&qualified) {
            match u8::try_from(slot) {
                Ok(s) => self.out.extend_from_slice(&[BINGET, s]),
                Err(_) => {
                    self.out.push(LONG_BINGET);
                    self.out.extend_from_slice(&slot.to_le_bytes());
                }
            }
            return;
        }
        self.out.push(GLOBAL);
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        let slot = self.memo.len() as u32;
        match u8::try_from(slot) {
            Ok(s) => self.out.extend_from_slice(&[BINPUT, s]),
            Err(_) => {
                self.out.push(LONG_BINPUT);
                self.out.extend_from_slice(&slot.to_le_bytes());
            }
        }
        self.memo.insert(qualified, slot);
    }

    /// `numpy.reshape(numpy.frombuffer(bytearray(data), "<f4"), shape)`.
    fn f32_array(&mut self, data: &[u8], shape: &[usize]) {
        debug_assert_eq!(data.len(), 4 * shape.iter().product::<usize>());
        self.global("numpy", "reshape");
        self.global("numpy", "frombuffer");
        self.global("builtins", "bytearray");
        self.out.push(BINBYTES);
        self.len_u32(data.len());
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(&[TUPLE1, REDUCE]); // bytearray(data)
        self.str("<f4");
        self.out.extend_from_slice(&[TUPLE2, REDUCE]); // frombuffer(..., "<f4")
        self.out.push(MARK);
        for &d in shape {
            self.int(d);
        }
        self.out.push(TUPLE); // the shape tuple
        self.out.extend_from_slice(&[TUPLE2, REDUCE]); // reshape(..., shape)
    }
}
