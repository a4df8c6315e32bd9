//! `--set PATH=VALUE`: any field of a config by its dotted path (`optim.base_lr`, list items by
//! index: `probe.images.0`), on top of the file or the command's built-in config.
//!
//! VALUE is RON, written as the field is in the file (`1e-3`, `true`, `bf16`, `[0, 1]`,
//! `FirstMain(4)`, `Some(3)` or just `3`, `None`, `"text"` or a bare word for a text or path
//! field), and it is typed by the field it replaces: the field's own `Deserialize` reads it. So
//! an override is parsed exactly as the file's value would be, and afterwards the config's rules
//! check it as one of the file's (`RunConfig::load_edited`).
//!
//! How: the loaded config (defaults filled in) is serialised to a JSON tree, then deserialised
//! back to its type through [`Splice`], a deserializer that hands every field on unchanged except
//! the one at the path, which it reads from VALUE with RON's deserializer. Editing the tree
//! instead would leave VALUE untyped: a `null` there may be any `Option`, a `"f32"` a text or an
//! enum; the field's own `Deserialize`, asked through the type, knows. (A non-finite float has no
//! JSON form: a config holding one cannot be overridden, and says so.)

use std::fmt;

use serde::Serialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::Value;

use crate::config::ConfigError;

/// One `--set PATH=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOverride {
    /// Dotted field path: `optim.base_lr`, `parallel.devices`, `probe.images.0`.
    pub path: String,
    /// The value in RON, as the file would write it.
    pub value: String,
}

impl ConfigOverride {
    /// Parses `PATH=VALUE` (the value parser of `--set`); VALUE may itself hold `=`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((path, value)) = text.split_once('=') else {
            return Err(format!(
                "`{text}` is not PATH=VALUE: give a field path, `=` and a value in RON, \
                 e.g. optim.base_lr=1e-3"
            ));
        };
        let path = path.trim();
        if path
            .split('.')
            .any(|part| part.is_empty() || part != part.trim())
        {
            return Err(format!(
                "`{text}`: `{path}` is not a field path such as optim.base_lr"
            ));
        }
        Ok(Self {
            path: path.to_string(),
            value: value.trim().to_string(),
        })
    }

    /// Whether this override sets `field`, a part of it or a field holding it
    /// (`data.workers` is set by `data.workers=4` and by `data=(workers: 4)`).
    pub fn touches(&self, field: &str) -> bool {
        within(&self.path, field) || within(field, &self.path)
    }

    /// Whether the path is `field` or lies inside it (`parallel.devices` inside `parallel`).
    pub fn is_within(&self, field: &str) -> bool {
        within(&self.path, field)
    }

    /// This override, refused for `why` (a command's own rule, e.g. on `train --resume`).
    pub fn refused(&self, why: impl Into<String>) -> ConfigError {
        ConfigError::Override {
            setting: self.to_string(),
            message: why.into(),
        }
    }
}

/// Whether the dotted path `inner` is `outer` or inside it (`optim.base_lr` in `optim`, not in
/// `optim.base`).
fn within(inner: &str, outer: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

impl fmt::Display for ConfigOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.path, self.value)
    }
}

/// `config` with every override applied in order (a later one wins over an earlier one). An
/// unknown path or a value that does not fit its field is an error naming the override, the
/// expected type and what was found; the config's own rules are the caller's to check after.
pub fn apply_overrides<T: Serialize + DeserializeOwned>(
    mut config: T,
    overrides: &[ConfigOverride],
) -> Result<T, ConfigError> {
    for one in overrides {
        config = apply_one(&config, one).map_err(|message| one.refused(message))?;
    }
    Ok(config)
}

/// Notes on each broken rule of `error` that an override set the field (`optim.batch_size: must
/// be in 1..=65536, is 0 (--set optim.batch_size=0)`), so a value from the command line is not
/// looked for in the file.
pub fn mark_overridden(error: ConfigError, overrides: &[ConfigOverride]) -> ConfigError {
    match error {
        ConfigError::Invalid { path, problems } => ConfigError::Invalid {
            path,
            problems: problems
                .into_iter()
                .map(|mut problem| {
                    if let Some(one) = overrides.iter().rev().find(|o| o.touches(&problem.field)) {
                        problem.message = format!("{} (--set {one})", problem.message);
                    }
                    problem
                })
                .collect(),
        },
        other => other,
    }
}

fn apply_one<T: Serialize + DeserializeOwned>(
    config: &T,
    one: &ConfigOverride,
) -> Result<T, String> {
    let tree = serde_json::to_value(config).map_err(|e| format!("cannot read the config: {e}"))?;
    let path: Vec<&str> = one.path.split('.').collect();
    let now = tree
        .pointer(&format!("/{}", path.join("/")))
        .map(ron_text)
        .unwrap_or_default();
    T::deserialize(Splice {
        node: tree,
        path: &path,
        depth: 0,
        value: &one.value,
    })
    .map_err(|e| match e.says_found {
        true => e.message,
        false => format!("{}, found {:?} (now {now})", e.message, one.value),
    })
}

/// A value of the tree in RON (JSON's where RON has no word for it).
fn ron_text(value: &Value) -> String {
    ron::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// Why an override does not fit: the message after `--set PATH=VALUE: `.
#[derive(Debug)]
struct SpliceError {
    message: String,
    /// Whether the message says what was found; serde's own (`data did not match any variant
    /// of untagged enum Devices`) do not, and VALUE is added to them.
    says_found: bool,
}

impl SpliceError {
    fn new(message: String) -> Self {
        Self {
            message,
            says_found: true,
        }
    }

    /// An error of a field that VALUE does not touch (a value JSON cannot hold, such as NaN).
    fn unchanged(error: serde_json::Error) -> Self {
        Self::new(format!("cannot read the rest of the config back: {error}"))
    }
}

impl fmt::Display for SpliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpliceError {}

impl de::Error for SpliceError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        Self {
            message: message.to_string(),
            says_found: false,
        }
    }
}

/// What a visitor expects, in serde's words (`f64`, `usize`, `enum Precision`).
struct Expecting<'a, V>(&'a V);

impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

/// The dotted path of the first `depth` parts, for messages (`the config` at the top).
fn named(path: &[&str], depth: usize) -> String {
    if depth == 0 {
        "the config".to_string()
    } else {
        format!("`{}`", path[..depth].join("."))
    }
}

/// A node of the config's tree on the way to the overridden field: `path[..depth]` led here,
/// `path[depth..]` (never empty) is still ahead.
struct Splice<'r> {
    node: Value,
    path: &'r [&'r str],
    depth: usize,
    value: &'r str,
}

impl<'r> Splice<'r> {
    /// The node as a struct or map (its fields) or a list (its items).
    fn descend<V: Visitor<'r>>(self, visitor: V) -> Result<V::Value, SpliceError> {
        let (path, depth, value) = (self.path, self.depth, self.value);
        let part = path[depth];
        let here = named(path, depth);
        match self.node {
            Value::Object(fields) => visitor.visit_map(SpliceMap {
                entries: fields.into_iter(),
                pending: None,
                seen: false,
                path,
                depth,
                value,
            }),
            Value::Array(items) => match part.parse::<usize>() {
                Ok(target) if target < items.len() => visitor.visit_seq(SpliceSeq {
                    items: items.into_iter(),
                    index: 0,
                    target,
                    path,
                    depth,
                    value,
                }),
                _ => Err(SpliceError::new(format!(
                    "{here} is a list of {count} item(s): `{part}` is not an index below {count} \
                     (set the whole list as [a, b, …])",
                    count = items.len()
                ))),
            },
            Value::Null => Err(SpliceError::new(format!(
                "{here} is None, so it has no `{part}`: set it whole, as Some(…)"
            ))),
            scalar => Err(SpliceError::new(format!(
                "{here} is a single value ({scalar}) and has no field `{part}`"
            ))),
        }
    }
}

impl<'r> Deserializer<'r> for Splice<'r> {
    type Error = SpliceError;

    fn deserialize_any<V: Visitor<'r>>(self, visitor: V) -> Result<V::Value, SpliceError> {
        self.descend(visitor)
    }

    fn deserialize_struct<V: Visitor<'r>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SpliceError> {
        let part = self.path[self.depth];
        if !fields.contains(&part) {
            return Err(SpliceError::new(format!(
                "{} has no field `{part}`; its fields: {}",
                named(self.path, self.depth),
                fields.join(", ")
            )));
        }
        self.descend(visitor)
    }

    fn deserialize_option<V: Visitor<'r>>(self, visitor: V) -> Result<V::Value, SpliceError> {
        if self.node.is_null() {
            // None has no fields: `descend` says so.
            return self.descend(visitor);
        }
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'r>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SpliceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'r>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, SpliceError> {
        Err(SpliceError::new(format!(
            "{} is one of {} and has no fields: set it whole",
            named(self.path, self.depth),
            variants.join(", ")
        )))
    }

    fn deserialize_ignored_any<V: Visitor<'r>>(self, visitor: V) -> Result<V::Value, SpliceError> {
        self.node
            .deserialize_ignored_any(visitor)
            .map_err(SpliceError::unchanged)
    }

    serde::forward_to_deserialize_any! {
        <W: Visitor<'r>>
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier
    }
}

/// Reads the child one step down the path: the overridden field itself, or the next node.
fn splice_child<'r, S: DeserializeSeed<'r>>(
    seed: S,
    node: Value,
    path: &'r [&'r str],
    depth: usize,
    value: &'r str,
) -> Result<S::Value, SpliceError> {
    if depth == path.len() {
        seed.deserialize(Leaf { value, now: node })
    } else {
        seed.deserialize(Splice {
            node,
            path,
            depth,
            value,
        })
    }
}

/// The fields of a struct (or the entries of a map), the one on the path spliced.
struct SpliceMap<'r> {
    entries: serde_json::map::IntoIter,
    /// The value of the key just read, and whether that key is the one on the path.
    pending: Option<(Value, bool)>,
    /// Whether the key on the path was met; if not (a field left out of the serialised form, a
    /// new map entry) it is added last.
    seen: bool,
    path: &'r [&'r str],
    depth: usize,
    value: &'r str,
}

impl<'r> MapAccess<'r> for SpliceMap<'r> {
    type Error = SpliceError;

    fn next_key_seed<K: DeserializeSeed<'r>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, SpliceError> {
        let target = self.path[self.depth];
        let (key, value) = match self.entries.next() {
            Some(entry) => entry,
            None if !self.seen => (target.to_string(), Value::Null),
            None => return Ok(None),
        };
        let on_path = key == target;
        self.seen |= on_path;
        self.pending = Some((value, on_path));
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'r>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, SpliceError> {
        match self.pending.take() {
            Some((value, true)) => splice_child(seed, value, self.path, self.depth + 1, self.value),
            Some((value, false)) => seed.deserialize(value).map_err(SpliceError::unchanged),
            None => Err(SpliceError::new(
                "a field's value was asked before its name".into(),
            )),
        }
    }
}

/// The items of a list, the one on the path spliced.
struct SpliceSeq<'r> {
    items: std::vec::IntoIter<Value>,
    index: usize,
    target: usize,
    path: &'r [&'r str],
    depth: usize,
    value: &'r str,
}

impl<'r> SeqAccess<'r> for SpliceSeq<'r> {
    type Error = SpliceError;

    fn next_element_seed<S: DeserializeSeed<'r>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, SpliceError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        if index == self.target {
            splice_child(seed, item, self.path, self.depth + 1, self.value).map(Some)
        } else {
            seed.deserialize(item)
                .map(Some)
                .map_err(SpliceError::unchanged)
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The overridden field: VALUE read by RON's deserializer as the field asks, so it is typed
/// and spelt as in the file. Two conveniences of the command line over the file: an `Option`
/// takes the bare value (`3` as `Some(3)`), and a text or path field a bare word (`runs/a`).
struct Leaf<'r> {
    value: &'r str,
    /// The field's value before, shown where serde names no type (an untagged enum).
    now: Value,
}

impl<'r> Leaf<'r> {
    /// Reads all of VALUE with RON as `read` (one `deserialize_*` method) does; `kind` says in
    /// words what that method reads, beside serde's name of the type.
    fn ron<V: Visitor<'r>>(
        self,
        kind: &str,
        visitor: V,
        read: impl FnOnce(&mut ron::Deserializer<'r>, V) -> Result<V::Value, ron::Error>,
    ) -> Result<V::Value, SpliceError> {
        let type_name = Expecting(&visitor).to_string();
        // serde's names of the generic types already read as words ("a boolean", "a sequence").
        let expected = if type_name == "any value" {
            format!("{kind} (now {})", ron_text(&self.now))
        } else if type_name.starts_with("a ") || type_name.starts_with("an ") {
            type_name
        } else {
            format!("{kind} ({type_name})")
        };
        let found = self.value;
        let mut de = ron::Deserializer::from_str(found)
            .map_err(|e| mismatch(&expected, found, e.span.start.col, &e.code))?;
        let value = read(&mut de, visitor).map_err(|e| {
            let column = de.span_error(ron::Error::Eof).span.start.col;
            mismatch(&expected, found, column, &e)
        })?;
        de.end().map_err(|e| {
            let column = de.span_error(ron::Error::Eof).span.start.col;
            mismatch(&expected, found, column, &e)
        })?;
        Ok(value)
    }

    /// Whether VALUE is written as a RON string (`"…"`, `r"…"`, `r#"…"#`) rather than bare.
    fn is_quoted(&self) -> bool {
        ["\"", "r\"", "r#"]
            .iter()
            .any(|q| self.value.starts_with(q))
    }
}

/// `expected …, found "…"`, with RON's words where they add to it: what is wrong inside a
/// struct or list, trailing text, a number out of range.
fn mismatch(expected: &str, found: &str, column: usize, error: &ron::Error) -> SpliceError {
    use ron::Error as E;
    let the_value_itself = matches!(
        error,
        E::ExpectedFloat
            | E::ExpectedInteger
            | E::ExpectedBoolean
            | E::ExpectedString
            | E::ExpectedChar
            | E::ExpectedIdentifier
            | E::InvalidIdentifier(_)
            | E::SuggestRawIdentifier(_)
            | E::NoSuchEnumVariant { .. }
    ) && column <= 1;
    let mut message = format!("expected {expected}, found {found:?}");
    if !the_value_itself {
        let words = error.to_string();
        let mut chars = words.chars();
        let words: String = chars
            .next()
            .map(|first| first.to_lowercase().chain(chars).collect())
            .unwrap_or_default();
        message.push_str(&format!(" ({words}, at column {column})"));
    }
    SpliceError::new(message)
}

macro_rules! read_with_ron {
    ($($method:ident: $kind:expr),* $(,)?) => {$(
        fn $method<V: Visitor<'r>>(self, visitor: V) -> Result<V::Value, SpliceError> {
            self.ron($kind, visitor, |de, visitor| de.$method(visitor))
        }
    )*};
}

impl<'r> Deserializer<'r> for Leaf<'r> {
    type Error = SpliceError;

    read_with_ron! {
        deserialize_any: "a value of the field's form",
        deserialize_bool: "true or false",
        deserialize_i8: "a whole number",
        deserialize_i16: "a whole number",
        deserialize_i32: "a whole number",
        deserialize_i64: "a whole number",
        deserialize_i128: "a whole number",
        deserialize_u8: "a whole number",
        deserialize_u16: "a whole number",
        deserialize_u32: "a whole number",
        deserialize_u64: "a whole number",
        deserialize_u128: "a whole number",
        deserialize_f32: "a number",
        deserialize_f64: "a number",
        deserialize_char: "a character",
        deserialize_bytes: "bytes",
        deserialize_byte_buf: "bytes",
        deserialize_unit: "()",
        deserialize_seq: "a list [a, b, …]",
        deserialize_map: "a map {key: value, …}",
        deserialize_identifier: "a name",
        deserialize_ignored_any: "a value",
    }

    fn deserialize_str<V: Visitor<'r>>(self, visitor: V) -> Result<V::Value, SpliceError> {
        if self.is_quoted() {
            self.ron("a string", visitor, |de, visitor| {
                de.deserialize_str(visitor)
            })
        } else {
            visitor.visit_str(self.value)
        }
    }

    fn deserialize_string<V: Visitor<'r>>(self, visitor: V) -> Result<V::Value, SpliceError> {
        if self.is_quoted() {
            self.ron("a string", visitor, |de, visitor| {
                de.deserialize_string(visitor)
            })
        } else {
            visitor.visit_str(self.value)
        }
    }

    fn deserialize_option<V: Visitor<'r>>(self, visitor: V) -> Result<V::Value, SpliceError> {
        let written_as_option = self.value == "None"
            || self
                .value
                .strip_prefix("Some")
                .is_some_and(|rest| rest.trim_start().starts_with('('));
        if written_as_option {
            self.ron("None or Some(…)", visitor, |de, visitor| {
                de.deserialize_option(visitor)
            })
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'r>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SpliceError> {
        self.ron("()", visitor, |de, visitor| {
            de.deserialize_unit_struct(name, visitor)
        })
    }

    fn deserialize_newtype_struct<V: Visitor<'r>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SpliceError> {
        self.ron("a value", visitor, |de, visitor| {
            de.deserialize_newtype_struct(name, visitor)
        })
    }

    fn deserialize_tuple<V: Visitor<'r>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, SpliceError> {
        self.ron("a tuple", visitor, |de, visitor| {
            de.deserialize_tuple(len, visitor)
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'r>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, SpliceError> {
        self.ron("a tuple", visitor, |de, visitor| {
            de.deserialize_tuple_struct(name, len, visitor)
        })
    }

    fn deserialize_struct<V: Visitor<'r>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SpliceError> {
        self.ron("a struct", visitor, |de, visitor| {
            de.deserialize_struct(name, fields, visitor)
        })
    }

    fn deserialize_enum<V: Visitor<'r>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SpliceError> {
        let kind = format!("one of {}", variants.join(", "));
        self.ron(&kind, visitor, |de, visitor| {
            de.deserialize_enum(name, variants, visitor)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{Devices, Precision, RunConfig};
    use kdlab_model::model::BlockSelection;

    fn set(settings: &[&str]) -> Result<RunConfig, String> {
        let overrides: Vec<ConfigOverride> = settings
            .iter()
            .map(|text| ConfigOverride::parse(text))
            .collect::<Result<_, _>>()?;
        apply_overrides(RunConfig::default(), &overrides).map_err(|e| e.to_string())
    }

    #[test]
    fn no_override_keeps_the_config() {
        assert_eq!(set(&[]).unwrap(), RunConfig::default());
    }

    #[test]
    fn a_nested_field_changes_and_nothing_else() {
        let mut expected = RunConfig::default();
        expected.optim.base_lr = 1e-3;
        expected.data.workers = 4;
        if let Some(student) = expected.student.architecture.as_mut() {
            student.depth = 3;
        }
        let got = set(&[
            "optim.base_lr=1e-3",
            "data.workers=4",
            "student.architecture.depth=3",
        ]);
        assert_eq!(got.unwrap(), expected);
    }

    #[test]
    fn option_fields_take_some_none_or_the_bare_value() {
        assert_eq!(
            set(&["optim.max_steps=3"]).unwrap().optim.max_steps,
            Some(3)
        );
        assert_eq!(
            set(&["optim.max_steps=Some(3)"]).unwrap().optim.max_steps,
            Some(3)
        );
        assert_eq!(
            set(&["val_every=5", "val_every=None"]).unwrap().val_every,
            None,
            "the later override wins"
        );
        assert_eq!(
            set(&["optim.clip_grad_norm=1"])
                .unwrap()
                .optim
                .clip_grad_norm,
            Some(1.0)
        );
        let random = set(&["teacher.architecture=None"]).unwrap();
        assert_eq!(random.teacher.architecture, None);
        let e = set(&["teacher.architecture=None", "teacher.architecture.depth=2"]).unwrap_err();
        assert_eq!(
            e,
            "--set teacher.architecture.depth=2: `teacher.architecture` is None, so it has no \
             `depth`: set it whole, as Some(…)"
        );
    }

    #[test]
    fn enum_fields_are_spelt_as_in_the_file() {
        assert_eq!(set(&["precision=bf16"]).unwrap().precision, Precision::Bf16);
        assert_eq!(
            set(&["student.blocks=FirstMain(4)"])
                .unwrap()
                .student
                .blocks,
            BlockSelection::FirstMain(4)
        );
        assert_eq!(
            set(&["precision=Bf16"]).unwrap_err(),
            "--set precision=Bf16: expected one of f32, bf16, f16 (enum Precision), found \"Bf16\""
        );
        let e = set(&["student.blocks.FirstMain=4"]).unwrap_err();
        assert!(
            e.contains("`student.blocks` is one of FirstMain, Total"),
            "{e}"
        );
        let e = set(&["student.blocks=FirstMain(x)"]).unwrap_err();
        assert!(e.contains("(expected integer, at column 11)"), "{e}");
    }

    #[test]
    fn devices_are_a_count_or_a_list() {
        let count = set(&["parallel.devices=2"]).unwrap();
        assert_eq!(count.parallel.devices, Devices::Count(2));
        let list = set(&["parallel.devices=[0, 2]"]).unwrap();
        assert_eq!(list.parallel.devices, Devices::List(vec![0, 2]));
        let item = set(&["parallel.devices=[0, 2]", "parallel.devices.1=3"]).unwrap();
        assert_eq!(item.parallel.devices, Devices::List(vec![0, 3]));
        assert_eq!(
            set(&["parallel.devices=two"]).unwrap_err(),
            "--set parallel.devices=two: data did not match any variant of untagged enum \
             Devices, found \"two\" (now 1)"
        );
    }

    #[test]
    fn an_unknown_path_names_the_part_and_the_fields_there() {
        let e = set(&["optim.base_rate=1e-3"]).unwrap_err();
        assert!(
            e.starts_with(
                "--set optim.base_rate=1e-3: `optim` has no field `base_rate`; its fields: \
                 base_lr, batch_size, grad_accum_steps,"
            ),
            "{e}"
        );
        let e = set(&["optimiser.base_lr=1e-3"]).unwrap_err();
        assert!(
            e.starts_with("--set optimiser.base_lr=1e-3: the config has no field `optimiser`"),
            "{e}"
        );
        assert_eq!(
            set(&["seed.low=1"]).unwrap_err(),
            "--set seed.low=1: `seed` is a single value (42) and has no field `low`"
        );
        assert_eq!(
            set(&["probe.images.0=a.jpg"]).unwrap_err(),
            "--set probe.images.0=a.jpg: `probe.images` is a list of 0 item(s): `0` is not an \
             index below 0 (set the whole list as [a, b, …])"
        );
    }

    #[test]
    fn a_bad_value_names_the_expected_type_and_what_was_found() {
        assert_eq!(
            set(&["optim.base_lr=abc"]).unwrap_err(),
            "--set optim.base_lr=abc: expected a number (f64), found \"abc\""
        );
        assert_eq!(
            set(&["optim.epochs=-1"]).unwrap_err(),
            "--set optim.epochs=-1: expected a whole number (usize), found \"-1\" (integer is \
             out of bounds, at column 2)"
        );
        assert_eq!(
            set(&["data.workers=4 8"]).unwrap_err(),
            "--set data.workers=4 8: expected a whole number (usize), found \"4 8\" \
             (non-whitespace trailing characters, at column 2)"
        );
        let e = set(&["optim.betas=(0.9)"]).unwrap_err();
        assert!(
            e.contains("expected a tuple of size 2, found \"(0.9)\""),
            "{e}"
        );
        let e = set(&["probe=(imags: [])"]).unwrap_err();
        assert!(e.contains("unexpected field named `imags`"), "{e}");
        let e = set(&["teacher.architecture=Some((depth: 3))"]).unwrap_err();
        assert!(e.contains("missing field named `image_size`"), "{e}");
    }

    #[test]
    fn text_and_path_fields_take_a_bare_word_or_a_string() {
        let run = set(&[
            "name=ablation",
            "data.train=/data/imagenet/train",
            "teacher.weights=weights/beitv2.pth",
            "data.crop_scale=(0.4, 1.0)",
        ])
        .unwrap();
        assert_eq!(run.name, "ablation");
        assert_eq!(run.data.train, PathBuf::from("/data/imagenet/train"));
        assert_eq!(
            run.teacher.weights,
            Some(PathBuf::from("weights/beitv2.pth"))
        );
        assert_eq!(run.data.crop_scale, (0.4, 1.0));
        assert_eq!(set(&[r#"name="a b""#]).unwrap().name, "a b");
        let images = set(&[r#"probe.images=["a.jpg", "b.jpg"]"#, "probe.images.1=c.jpg"]).unwrap();
        assert_eq!(
            images.probe.images,
            [PathBuf::from("a.jpg"), "c.jpg".into()]
        );
    }

    #[test]
    fn a_value_json_cannot_hold_is_an_error_not_a_panic() {
        let mut config = RunConfig::default();
        config.optim.eps = f64::NAN;
        let overrides = [ConfigOverride::parse("seed=1").unwrap()];
        let e = apply_overrides(config, &overrides).unwrap_err().to_string();
        assert!(
            e.starts_with("--set seed=1: cannot read the rest of the config back"),
            "{e}"
        );
    }

    #[test]
    fn a_whole_section_is_written_as_in_the_file() {
        let run = set(&["optim=(epochs: 2, max_steps: Some(5))"]).unwrap();
        assert_eq!((run.optim.epochs, run.optim.max_steps), (2, Some(5)));
        assert_eq!(
            run.optim.batch_size, 256,
            "the rest takes the defaults, as in a file"
        );
    }

    #[test]
    fn settings_are_path_equals_value() {
        let one = ConfigOverride::parse("optim.base_lr = 1e-3").unwrap();
        assert_eq!(
            (one.path.as_str(), one.value.as_str()),
            ("optim.base_lr", "1e-3")
        );
        let coordinator = ConfigOverride::parse("parallel.coordinator=a=b:1").unwrap();
        assert_eq!(coordinator.value, "a=b:1", "only the first = splits");
        let e = ConfigOverride::parse("optim.base_lr").unwrap_err();
        assert!(e.contains("is not PATH=VALUE"), "{e}");
        assert!(ConfigOverride::parse("=1").is_err());
        assert!(ConfigOverride::parse("optim..base_lr=1").is_err());
        assert!(one.touches("optim") && one.touches("optim.base_lr"));
        assert!(!one.touches("optim.base") && !one.touches("data"));
        assert!(one.is_within("optim") && !one.is_within("optim.base_lr.x"));
    }

    #[test]
    fn a_file_and_its_overrides_are_checked_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ron");
        std::fs::write(&path, "(optim: (batch_size: 0))").unwrap();
        let overrides = [ConfigOverride::parse("optim.batch_size=8").unwrap()];
        let fixed = RunConfig::load_edited(&path, |c| apply_overrides(c, &overrides)).unwrap();
        assert_eq!(
            fixed.optim.batch_size, 8,
            "the file's broken value is replaced"
        );

        std::fs::write(&path, "()").unwrap();
        let overrides = [ConfigOverride::parse("data.workers=0").unwrap()];
        let e = RunConfig::load_edited(&path, |c| apply_overrides(c, &overrides))
            .map_err(|e| mark_overridden(e, &overrides))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("c.ron: data.workers: must be in 1..=1024, is 0 (--set data.workers=0)"),
            "the rule as for the file's value, and where the value came from: {e}"
        );
    }
}
