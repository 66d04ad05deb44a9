//! The fields a `Deserialize` type reads, as a JSON skeleton: every struct field by name, an array
//! as a one-element list of its item's skeleton, free-form maps and values as null. The schema
//! test compares it with schemas/manifest.schema.json, so the Rust types and the schema cannot drift.

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

type Error = de::value::Error;

/// The skeleton of the fields `T` reads.
pub fn skeleton<'de, T: Deserialize<'de>>() -> Result<Value, Error> {
    let mut out = Value::Null;
    T::deserialize(Probe { out: &mut out })?;
    Ok(out)
}

struct Probe<'a> {
    out: &'a mut Value,
}

struct Fields<'a> {
    names: &'static [&'static str],
    next: usize,
    out: &'a mut Map<String, Value>,
}

impl<'de, 'a> MapAccess<'de> for Fields<'a> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.names.get(self.next) {
            Some(name) => seed.deserialize((*name).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let name = self.names[self.next];
        self.next += 1;
        let slot = self.out.entry(name.to_string()).or_insert(Value::Null);
        seed.deserialize(Probe { out: slot })
    }
}

/// A sequence of `len` items, each probed into the same slot.
struct Items<'a> {
    left: usize,
    out: &'a mut Value,
}

impl<'de, 'a> SeqAccess<'de> for Items<'a> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(Probe { out: &mut *self.out }).map(Some)
    }
}

struct NoEntries;

impl<'de> MapAccess<'de> for NoEntries {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, _: K) -> Result<Option<K::Value>, Error> {
        Ok(None)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("no values"))
    }
}

impl<'a> Probe<'a> {
    fn seq<'de, V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let mut item = Value::Null;
        let result = visitor.visit_seq(Items { left: len, out: &mut item })?;
        *self.out = Value::Array(vec![item]);
        Ok(result)
    }
}

impl<'de, 'a> de::Deserializer<'de> for Probe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.seq(1, visitor)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.seq(len, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(NoEntries)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mut map = Map::new();
        let result = visitor.visit_map(Fields { names: fields, next: 0, out: &mut map })?;
        *self.out = Value::Object(map);
        Ok(result)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 u8 u16 u32 f32 char bytes byte_buf unit unit_struct newtype_struct
        tuple_struct enum identifier ignored_any i128 u128
    }
}
