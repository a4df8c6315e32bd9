//! A pickle reader that runs nothing.
//!
//! Python's unpickler is a stack machine that may call any importable function; this one knows
//! the few that `torch.save` writes (an `OrderedDict`, a tensor rebuilt from a storage) and keeps
//! any other call as an inert description. It is built to survive hostile input:
//!
//! - every value lives in one arena and is referred to by index, so the memo, `DUP` and the
//!   containers share values instead of copying them (a pickle that "doubles" an object 40 times
//!   costs 40 entries, not 2⁴⁰);
//! - each opcode does work proportional to what it reads or pops (`SETITEMS` drains the stack's
//!   tail, nothing shifts), so reading is linear in the pickle's size;
//! - nothing recurses: the walks over the result (`tensors`, `to_json`) keep their own stack and
//!   stop at a depth and a number of visits;
//! - the pickle's bytes and the objects it creates or pushes are counted against `Limits`, and
//!   lengths are checked against what is left before anything is allocated.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use crate::elements::Dtype;
use crate::{Error, Limits};

pub type Id = u32;

#[derive(Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as pickled (little-endian two's complement).
    BigInt(Box<[u8]>),
    Float(f64),
    Str(Box<str>),
    Bytes(Box<[u8]>),
    List(Vec<Id>),
    Tuple(Box<[Id]>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// A class or function named by the pickle (`module`, `name`); never imported.
    Global(Box<(String, String)>),
    /// What calling a global would have built: kept as a description, never called.
    Object(Box<Object>),
    Storage(Box<Storage>),
    Tensor(Box<TensorView>),
}

#[derive(Debug)]
pub struct Object {
    pub class: (String, String),
    pub args: Id,
    /// What `BUILD` gave it.
    pub state: Option<Id>,
}

/// A storage as a persistent id names it (`('storage', torch.FloatStorage, key, location,
/// numel)`): the data live outside the pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub key: String,
    pub dtype: Dtype,
    pub numel: u64,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`, in elements.
#[derive(Debug, Clone)]
pub struct TensorView {
    pub storage: Storage,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub strides: Vec<u64>,
}

/// A pickle as read: its values and the one it returned.
#[derive(Debug)]
pub struct Pickle {
    values: Vec<Value>,
    root: Id,
}

/// What a persistent id becomes; the container knows its own layout.
pub type PersistentLoad<'a> = dyn FnMut(&Pickle, Id) -> Result<Storage, String> + 'a;

struct Input<'r, R: Read> {
    reader: &'r mut R,
    /// Bytes read so far.
    at: u64,
    limit: u64,
}

impl<R: Read> Input<'_, R> {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, Error> {
        if n > self.limit - self.at {
            return Err(Error::invalid(format!(
                "the pickle needs {n} more bytes at byte {} but may have at most {} in all",
                self.at, self.limit
            )));
        }
        let mut buf = Vec::new();
        // Grows with what is actually there: a length the file lies about costs nothing.
        (&mut *self.reader).take(n).read_to_end(&mut buf)?;
        if (buf.len() as u64) < n {
            return Err(Error::invalid(format!(
                "the pickle ends inside an opcode's argument at byte {}",
                self.at + buf.len() as u64
            )));
        }
        self.at += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let bytes = self.bytes(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A text argument up to its newline (protocol 0 opcodes), at most 256 bytes.
    fn line(&mut self) -> Result<String, Error> {
        let mut line = Vec::new();
        loop {
            match self.u8()? {
                b'\n' => break,
                _ if line.len() >= 256 => {
                    return Err(Error::invalid(format!(
                        "a text argument longer than 256 bytes at byte {}",
                        self.at
                    )));
                }
                b => line.push(b),
            }
        }
        let line = String::from_utf8(line).map_err(|_| {
            Error::invalid(format!(
                "a text argument that is not UTF-8 before byte {}",
                self.at
            ))
        })?;
        Ok(line.trim_end_matches('\r').to_string())
    }
}

/// The stack machine's state.
struct Machine<'p> {
    pickle: Pickle,
    stack: Vec<Id>,
    /// Stack heights at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Objects created or pushed so far.
    objects: usize,
    limits: &'p Limits,
    /// Byte offset of the opcode being run, for errors.
    at: u64,
    op: u8,
}

/// Reads one pickle from `reader` (which it leaves just after the `STOP`).
pub fn parse<R: Read>(
    reader: &mut R,
    limits: &Limits,
    persistent_load: &mut PersistentLoad<'_>,
) -> Result<Pickle, Error> {
    let mut input = Input {
        reader,
        at: 0,
        limit: limits.pickle_bytes,
    };
    let mut vm = Machine {
        pickle: Pickle {
            values: Vec::new(),
            root: 0,
        },
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: 0,
        limits,
        at: 0,
        op: 0,
    };
    loop {
        vm.at = input.at;
        vm.op = input.u8().map_err(|e| match e {
            Error::Invalid(_) => Error::invalid(format!(
                "the pickle ends at byte {} without its STOP opcode",
                input.at
            )),
            other => other,
        })?;
        if vm.step(&mut input, persistent_load)? {
            let root = vm.pop()?;
            vm.pickle.root = root;
            return Ok(vm.pickle);
        }
    }
}

impl Machine<'_> {
    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::invalid(format!(
            "pickle opcode 0x{:02x} at byte {}: {message}",
            self.op, self.at
        ))
    }

    fn count(&mut self, n: usize) -> Result<(), Error> {
        self.objects += n;
        if self.objects > self.limits.pickle_objects {
            return Err(self.error(format!(
                "the pickle creates more than {} objects, more than any checkpoint needs",
                self.limits.pickle_objects
            )));
        }
        Ok(())
    }

    fn new_value(&mut self, value: Value) -> Result<Id, Error> {
        self.count(1)?;
        let id = self.pickle.values.len() as Id;
        self.pickle.values.push(value);
        Ok(id)
    }

    fn push(&mut self, id: Id) -> Result<(), Error> {
        self.count(1)?;
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, value: Value) -> Result<(), Error> {
        let id = self.new_value(value)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, Error> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("pops from an empty stack"));
        }
        Ok(self.stack.pop().unwrap_or_default())
    }

    fn top(&self) -> Result<Id, Error> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(&id) if self.stack.len() > floor => Ok(id),
            _ => Err(self.error("reads an empty stack")),
        }
    }

    /// The items pushed since the last `MARK`, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>, Error> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.error("needs a MARK and there is none"))?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, index: u32) -> Result<Id, Error> {
        self.memo
            .get(&index)
            .copied()
            .ok_or_else(|| self.error(format!("memo entry {index} was never stored")))
    }

    fn memo_put(&mut self, index: u32) -> Result<(), Error> {
        let top = self.top()?;
        self.count(1)?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn value(&self, id: Id) -> &Value {
        &self.pickle.values[id as usize]
    }

    fn value_mut(&mut self, id: Id) -> &mut Value {
        &mut self.pickle.values[id as usize]
    }

    fn append(&mut self, list: Id, items: Vec<Id>) -> Result<(), Error> {
        match self.value_mut(list) {
            Value::List(l) | Value::Set(l) => {
                l.extend(items);
                Ok(())
            }
            // `list.extend` of a class nothing here builds: kept aside, harmless.
            Value::Object(_) => Ok(()),
            other => {
                let kind = kind(other);
                Err(self.error(format!("appends to {kind}, not to a list")))
            }
        }
    }

    fn set_items(&mut self, dict: Id, items: Vec<Id>) -> Result<(), Error> {
        if !items.len().is_multiple_of(2) {
            return Err(self.error("sets a key without a value"));
        }
        match self.value_mut(dict) {
            Value::Dict(d) => {
                d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => {
                let kind = kind(other);
                Err(self.error(format!("sets items of {kind}, not of a dict")))
            }
        }
    }

    fn int_arg(&self, id: Id, what: &str) -> Result<i64, Error> {
        match self.value(id) {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => Err(self.error(format!(
                "{what} should be an integer, found {}",
                kind(other)
            ))),
        }
    }

    fn tuple_items(&self, id: Id, what: &str) -> Result<Vec<Id>, Error> {
        match self.value(id) {
            Value::Tuple(items) => Ok(items.to_vec()),
            Value::List(items) => Ok(items.clone()),
            other => Err(self.error(format!("{what} should be a tuple, found {}", kind(other)))),
        }
    }

    fn ints(&self, id: Id, what: &str) -> Result<Vec<u64>, Error> {
        self.tuple_items(id, what)?
            .into_iter()
            .map(|i| {
                let v = self.int_arg(i, what)?;
                u64::try_from(v).map_err(|_| self.error(format!("{what} holds {v}, below zero")))
            })
            .collect()
    }

    /// `REDUCE`/`NEWOBJ`: the calls `torch.save` writes, understood; any other kept inert.
    fn call(&mut self, callable: Id, args: Id) -> Result<Id, Error> {
        let Value::Global(g) = self.value(callable) else {
            let found = kind(self.value(callable));
            return Err(self.error(format!("calls {found}, not a named class or function")));
        };
        let class = (g.0.clone(), g.1.clone());
        let value = match (class.0.as_str(), class.1.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => {
                let items = self.tuple_items(args, "OrderedDict's arguments")?;
                let mut dict = Vec::new();
                if let Some(&pairs) = items.first() {
                    for pair in self.tuple_items(pairs, "OrderedDict's items")? {
                        match self.tuple_items(pair, "an OrderedDict item")?.as_slice() {
                            &[k, v] => dict.push((k, v)),
                            _ => return Err(self.error("an OrderedDict item is not a pair")),
                        }
                    }
                }
                self.count(dict.len())?;
                Value::Dict(dict)
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                Value::Tensor(Box::new(self.rebuild_tensor(args)?))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                let items = self.tuple_items(args, "_rebuild_parameter's arguments")?;
                match items.first().map(|&i| self.value(i)) {
                    Some(Value::Tensor(t)) => Value::Tensor(t.clone()),
                    _ => {
                        return Err(self.error("_rebuild_parameter is not given a tensor"));
                    }
                }
            }
            // A tensor subclass (`Parameter` with attributes): the inner rebuild, called here.
            ("torch._tensor", "_rebuild_from_type_v2") => {
                let items = self.tuple_items(args, "_rebuild_from_type_v2's arguments")?;
                let &[func, _, inner, ..] = items.as_slice() else {
                    return Err(self.error("_rebuild_from_type_v2 has too few arguments"));
                };
                // One level only: torch never nests it, and a crafted pickle could loop.
                if matches!(self.value(func), Value::Global(g) if g.1 == "_rebuild_from_type_v2") {
                    return Err(self.error("_rebuild_from_type_v2 calls itself"));
                }
                return self.call(func, inner);
            }
            _ => Value::Object(Box::new(Object {
                class,
                args,
                state: None,
            })),
        };
        self.new_value(value)
    }

    fn rebuild_tensor(&self, args: Id) -> Result<TensorView, Error> {
        let items = self.tuple_items(args, "a tensor's arguments")?;
        let &[storage, offset, shape, strides, ..] = items.as_slice() else {
            return Err(self.error("a tensor is rebuilt from fewer than 4 arguments"));
        };
        let Value::Storage(storage) = self.value(storage) else {
            let found = kind(self.value(storage));
            return Err(self.error(format!("a tensor's storage is {found}")));
        };
        let offset = self.int_arg(offset, "a tensor's storage offset")?;
        Ok(TensorView {
            storage: (**storage).clone(),
            offset: u64::try_from(offset)
                .map_err(|_| self.error(format!("a tensor's storage offset is {offset}")))?,
            shape: self.ints(shape, "a tensor's size")?,
            strides: self.ints(strides, "a tensor's stride")?,
        })
    }

    /// Runs one opcode; true at `STOP`.
    fn step<R: Read>(
        &mut self,
        input: &mut Input<'_, R>,
        persistent_load: &mut PersistentLoad<'_>,
    ) -> Result<bool, Error> {
        match self.op {
            0x80 => {
                let protocol = input.u8()?;
                if protocol > 5 {
                    return Err(self.error(format!("pickle protocol {protocol} is unknown")));
                }
            }
            0x95 => {
                input.u64()?; // FRAME: a length hint only
            }
            b'.' => return Ok(true),
            b'(' => {
                self.count(1)?;
                self.marks.push(self.stack.len());
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.push(top)?;
            }
            b'N' => self.push_new(Value::None)?,
            0x88 => self.push_new(Value::Bool(true))?,
            0x89 => self.push_new(Value::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(input.array()?);
                self.push_new(Value::Int(v.into()))?;
            }
            b'K' => {
                let v = input.u8()?;
                self.push_new(Value::Int(v.into()))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(input.array()?);
                self.push_new(Value::Int(v.into()))?;
            }
            0x8a | 0x8b => {
                let n = if self.op == 0x8a {
                    input.u8()? as u64
                } else {
                    input.u32()? as u64
                };
                let bytes = input.bytes(n)?;
                self.push_new(long(bytes))?;
            }
            b'G' => {
                let v = f64::from_be_bytes(input.array()?);
                self.push_new(Value::Float(v))?;
            }
            b'I' | b'L' => {
                let line = input.line()?;
                let text = line.trim_end_matches('L');
                let value = match text {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => match text.parse::<i64>() {
                        Ok(v) => Value::Int(v),
                        Err(_) => return Err(self.error(format!("'{line}' is not an integer"))),
                    },
                };
                self.push_new(value)?;
            }
            b'F' => {
                let line = input.line()?;
                let v = line
                    .parse::<f64>()
                    .map_err(|_| self.error(format!("'{line}' is not a number")))?;
                self.push_new(Value::Float(v))?;
            }
            b'X' | 0x8c | 0x8d => {
                let n = match self.op {
                    0x8c => input.u8()? as u64,
                    b'X' => input.u32()? as u64,
                    _ => input.u64()?,
                };
                let bytes = input.bytes(n)?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| self.error("a string that is not UTF-8"))?;
                self.push_new(Value::Str(text.into()))?;
            }
            b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                let n = match self.op {
                    b'U' | b'C' => input.u8()? as u64,
                    b'T' | b'B' => input.u32()? as u64,
                    _ => input.u64()?,
                };
                let bytes = input.bytes(n)?;
                // Python 2 strings (`BINSTRING`) come back as text where they are text.
                let value = match (self.op, String::from_utf8(bytes)) {
                    (b'T' | b'U', Ok(text)) => Value::Str(text.into()),
                    (_, Ok(text)) => Value::Bytes(text.into_bytes().into()),
                    (_, Err(e)) => Value::Bytes(e.into_bytes().into()),
                };
                self.push_new(value)?;
            }
            b')' => self.push_new(Value::Tuple(Box::new([])))?,
            b']' => self.push_new(Value::List(Vec::new()))?,
            b'}' => self.push_new(Value::Dict(Vec::new()))?,
            0x8f => self.push_new(Value::Set(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push_new(Value::Tuple(items.into()))?;
            }
            0x85..=0x87 => {
                let n = (self.op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_new(Value::Tuple(items.into()))?;
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push_new(Value::List(items))?;
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push_new(Value::Set(items))?;
            }
            b'd' => {
                let items = self.pop_mark()?;
                let id = self.new_value(Value::Dict(Vec::new()))?;
                self.set_items(id, items)?;
                self.stack.push(id);
            }
            b'a' => {
                let item = self.pop()?;
                let list = self.top()?;
                self.append(list, vec![item])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                let list = self.top()?;
                self.append(list, items)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                let dict = self.top()?;
                self.set_items(dict, vec![key, value])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let dict = self.top()?;
                self.set_items(dict, items)?;
            }
            b'q' => {
                let i = input.u8()? as u32;
                self.memo_put(i)?;
            }
            b'r' => {
                let i = input.u32()?;
                self.memo_put(i)?;
            }
            b'p' => {
                let line = input.line()?;
                let i = line
                    .parse()
                    .map_err(|_| self.error(format!("'{line}' is not a memo index")))?;
                self.memo_put(i)?;
            }
            0x94 => {
                let i =
                    u32::try_from(self.memo.len()).map_err(|_| self.error("the memo is full"))?;
                self.memo_put(i)?;
            }
            b'h' => {
                let i = input.u8()? as u32;
                let id = self.memo_get(i)?;
                self.push(id)?;
            }
            b'j' => {
                let i = input.u32()?;
                let id = self.memo_get(i)?;
                self.push(id)?;
            }
            b'g' => {
                let line = input.line()?;
                let i = line
                    .parse()
                    .map_err(|_| self.error(format!("'{line}' is not a memo index")))?;
                let id = self.memo_get(i)?;
                self.push(id)?;
            }
            b'c' => {
                let module = input.line()?;
                let name = input.line()?;
                self.push_new(Value::Global(Box::new((module, name))))?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (self.value(module), self.value(name)) {
                    (Value::Str(m), Value::Str(n)) => {
                        let global = Value::Global(Box::new((m.to_string(), n.to_string())));
                        self.push_new(global)?;
                    }
                    _ => return Err(self.error("STACK_GLOBAL needs two strings")),
                }
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let id = self.call(callable, args)?;
                self.stack.push(id);
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let callable = self.pop()?;
                let id = self.call(callable, args)?;
                self.stack.push(id);
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?;
                if let Value::Object(object) = self.value_mut(target) {
                    object.state = Some(state);
                }
                // Other targets (an OrderedDict's `_metadata`, a tensor's hooks) carry nothing
                // kdlab reads.
            }
            b'Q' => {
                let pid = self.pop()?;
                let storage =
                    persistent_load(&self.pickle, pid).map_err(|message| self.error(message))?;
                self.push_new(Value::Storage(Box::new(storage)))?;
            }
            op => {
                let what = match op {
                    b'P' | b'S' | b'V' => "a protocol 0 text opcode torch.save does not write",
                    b'i' | b'o' => "an old-style instance",
                    0x82..=0x84 => "a copyreg extension",
                    0x97 | 0x98 => "an out-of-band buffer",
                    _ => "unknown",
                };
                return Err(self.error(format!("is not read ({what})")));
            }
        }
        Ok(false)
    }
}

/// `LONG1`/`LONG4`: little-endian two's complement.
fn long(bytes: Vec<u8>) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 8 {
        return Value::BigInt(bytes.into());
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut full = [if negative { 0xff } else { 0 }; 8];
    full[..bytes.len()].copy_from_slice(&bytes);
    Value::Int(i64::from_le_bytes(full))
}

/// A value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "a boolean",
        Value::Int(_) | Value::BigInt(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a dict",
        Value::Set(_) => "a set",
        Value::Global(_) => "a class",
        Value::Object(_) => "an object",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
    }
}

/// What a walk found: tensors by dotted key, and tensors of kinds kdlab does not read.
#[derive(Debug, Default)]
pub struct Found<'p> {
    pub tensors: BTreeMap<String, &'p TensorView>,
    pub unreadable: BTreeMap<String, String>,
}

impl Pickle {
    pub fn root(&self) -> Id {
        self.root
    }

    pub fn value(&self, id: Id) -> &Value {
        &self.values[id as usize]
    }

    /// A dict's entries, the last of equal keys winning (as Python's dict does).
    fn dict_entries<'p>(&'p self, entries: &'p [(Id, Id)]) -> Vec<(String, Id)> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<(String, Id)> = Vec::new();
        for &(k, v) in entries {
            let Some(name) = self.key_name(k) else {
                continue;
            };
            match seen.get(&name) {
                Some(&i) => out[i].1 = v,
                None => {
                    seen.insert(name.clone(), out.len());
                    out.push((name, v));
                }
            }
        }
        out
    }

    /// A dict key as a path segment: strings and integers only.
    fn key_name(&self, key: Id) -> Option<String> {
        match self.value(key) {
            Value::Str(s) => Some(s.to_string()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// Every tensor reachable through dicts, lists and tuples from the root, keyed by its path
    /// (`model.blocks.0.attn.qkv.weight`).
    pub fn tensors(&self, limits: &Limits) -> Result<Found<'_>, Error> {
        let mut found = Found::default();
        let mut stack: Vec<(Id, String, usize)> = vec![(self.root, String::new(), 0)];
        let mut visits = 0usize;
        while let Some((id, path, depth)) = stack.pop() {
            visits += 1;
            if visits > limits.visits {
                return Err(Error::invalid(format!(
                    "the pickle's containers reach more than {} objects (shared objects count \
                     once per reference), more than any checkpoint holds",
                    limits.visits
                )));
            }
            let child = |name: &str| {
                if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                }
            };
            let children: Vec<(String, Id)> = match self.value(id) {
                Value::Tensor(t) => {
                    found.tensors.insert(path, t);
                    continue;
                }
                Value::Dict(entries) => self
                    .dict_entries(entries)
                    .into_iter()
                    .map(|(k, v)| (child(&k), v))
                    .collect(),
                Value::List(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (child(&i.to_string()), v))
                    .collect(),
                Value::Tuple(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (child(&i.to_string()), v))
                    .collect(),
                Value::Object(o)
                    if o.class.0.starts_with("torch") && o.class.1.starts_with("_rebuild") =>
                {
                    found.unreadable.insert(
                        path,
                        format!(
                            "is a tensor that {}.{} rebuilds (quantised, sparse or on another \
                             device type), which kdlab does not read",
                            o.class.0, o.class.1
                        ),
                    );
                    continue;
                }
                _ => continue,
            };
            if !children.is_empty() && depth >= limits.depth {
                let at = match path.char_indices().nth(60) {
                    Some((cut, _)) => format!("{}…", &path[..cut]),
                    None => path,
                };
                return Err(Error::invalid(format!(
                    "the pickle's containers nest deeper than {} levels (at '{at}')",
                    limits.depth
                )));
            }
            // Reversed, so that the walk meets them in the file's order.
            stack.extend(children.into_iter().rev().map(|(p, v)| (v, p, depth + 1)));
        }
        Ok(found)
    }

    /// The value under `key` in the root dict, as JSON.
    pub fn root_entry_json(
        &self,
        key: &str,
        limits: &Limits,
    ) -> Result<Option<serde_json::Value>, Error> {
        let Value::Dict(entries) = self.value(self.root) else {
            return Ok(None);
        };
        match self
            .dict_entries(entries)
            .into_iter()
            .find(|(k, _)| k == key)
        {
            Some((_, id)) => self.to_json(id, key, limits).map(Some),
            None => Ok(None),
        }
    }

    /// A value as JSON, containers built bottom-up from an explicit stack. Objects become their
    /// `BUILD` state (an `argparse.Namespace` its fields); tensors, storages, bytes and classes
    /// become null.
    pub fn to_json(&self, id: Id, name: &str, limits: &Limits) -> Result<serde_json::Value, Error> {
        use serde_json::Value as Json;
        enum Task {
            Visit(Id, usize),
            /// Collect the last `n` results into an array, or an object with these keys.
            Array(usize),
            Object(Vec<String>),
        }
        let mut tasks = vec![Task::Visit(id, 0)];
        let mut results: Vec<Json> = Vec::new();
        let mut visits = 0usize;
        while let Some(task) = tasks.pop() {
            match task {
                Task::Visit(id, depth) => {
                    visits += 1;
                    if visits > limits.visits {
                        return Err(Error::invalid(format!(
                            "'{name}' reaches more than {} objects",
                            limits.visits
                        )));
                    }
                    let nested = |tasks: &mut Vec<Task>, items: Vec<Id>| {
                        for &item in items.iter().rev() {
                            tasks.push(Task::Visit(item, depth + 1));
                        }
                    };
                    let container = match self.value(id) {
                        Value::List(_) | Value::Tuple(_) | Value::Set(_) | Value::Dict(_) => true,
                        Value::Object(o) => o.state.is_some(),
                        _ => false,
                    };
                    if container && depth >= limits.depth {
                        return Err(Error::invalid(format!(
                            "'{name}' nests deeper than {} levels",
                            limits.depth
                        )));
                    }
                    match self.value(id) {
                        Value::None => results.push(Json::Null),
                        Value::Bool(b) => results.push(Json::Bool(*b)),
                        Value::Int(i) => results.push(Json::from(*i)),
                        Value::Float(f) => results.push(Json::from(*f)),
                        Value::Str(s) => results.push(Json::String(s.to_string())),
                        Value::List(items) | Value::Set(items) => {
                            tasks.push(Task::Array(items.len()));
                            nested(&mut tasks, items.clone());
                        }
                        Value::Tuple(items) => {
                            tasks.push(Task::Array(items.len()));
                            nested(&mut tasks, items.to_vec());
                        }
                        Value::Dict(entries) => {
                            let entries = self.dict_entries(entries);
                            let (keys, ids): (Vec<String>, Vec<Id>) = entries.into_iter().unzip();
                            tasks.push(Task::Object(keys));
                            nested(&mut tasks, ids);
                        }
                        Value::Object(o) => match o.state {
                            Some(state) => tasks.push(Task::Visit(state, depth + 1)),
                            None => results.push(Json::Null),
                        },
                        Value::BigInt(_)
                        | Value::Bytes(_)
                        | Value::Global(_)
                        | Value::Storage(_)
                        | Value::Tensor(_) => results.push(Json::Null),
                    }
                }
                Task::Array(n) => {
                    let items = results.split_off(results.len() - n);
                    results.push(Json::Array(items));
                }
                Task::Object(keys) => {
                    let values = results.split_off(results.len() - keys.len());
                    results.push(Json::Object(keys.into_iter().zip(values).collect()));
                }
            }
        }
        Ok(results.pop().unwrap_or(Json::Null))
    }
}
