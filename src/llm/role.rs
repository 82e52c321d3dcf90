//! The runtime's roles and [`PerRole`], one value per role.
//!
//! Prompts, per-role model overrides, scripts and models are all "one thing per role". They share
//! this one role-indexed container instead of each spelling out five fields and a `match`, and
//! the role names in config, script and prompt files come from [`AgentRole`]'s serde names.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// Who in the runtime is calling the model. Also selects per-role models and prompts.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AgentRole {
    /// Writes the plan.
    Planner,
    /// Runs one step's ReAct loop.
    Executor,
    /// Judges whether a step met its expected outcome.
    Verifier,
    /// Revises the remaining plan.
    Replanner,
    /// Merges step results into the final answer.
    Synthesizer,
}

impl AgentRole {
    /// Every role, in pipeline order (which is also the order of [`PerRole`]'s slots).
    pub const ALL: [AgentRole; 5] = [
        AgentRole::Planner,
        AgentRole::Executor,
        AgentRole::Verifier,
        AgentRole::Replanner,
        AgentRole::Synthesizer,
    ];

    /// The lower-case name used in config, scripts and spans (its serde name).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The role named `name` (its serde name), if any.
    pub fn from_name(name: &str) -> Option<AgentRole> {
        AgentRole::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for AgentRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `T` per [`AgentRole`]. In config and script files it is a table keyed by role name; a
/// missing role gets `T::default()`, an unknown one is an error naming it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerRole<T>([T; 5]);

impl<T> PerRole<T> {
    /// The value of each role, from `f(role)`.
    pub fn from_fn(mut f: impl FnMut(AgentRole) -> T) -> Self {
        Self(AgentRole::ALL.map(&mut f))
    }

    /// The value of each role, from `f(role)`, in [`AgentRole::ALL`] order; the first error
    /// stops it.
    pub fn try_from_fn<E>(f: impl FnMut(AgentRole) -> Result<T, E>) -> Result<Self, E> {
        let values: Vec<T> = AgentRole::ALL.into_iter().map(f).collect::<Result<_, E>>()?;
        let values: [T; 5] = values.try_into().unwrap_or_else(|_: Vec<T>| unreachable!("one value per role"));
        Ok(Self(values))
    }

    /// The value for `role`.
    pub fn get(&self, role: AgentRole) -> &T {
        &self.0[role as usize]
    }

    /// The value for `role`, to change it.
    pub fn get_mut(&mut self, role: AgentRole) -> &mut T {
        &mut self.0[role as usize]
    }

    /// Every role with its value, in [`AgentRole::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (AgentRole, &T)> {
        AgentRole::ALL.into_iter().zip(self.0.iter())
    }

    /// A value per role computed from this one's.
    pub fn map<U>(&self, mut f: impl FnMut(AgentRole, &T) -> U) -> PerRole<U> {
        PerRole::from_fn(|role| f(role, self.get(role)))
    }

    /// Sets `role`'s value, builder style.
    pub fn with(mut self, role: AgentRole, value: T) -> Self {
        *self.get_mut(role) = value;
        self
    }
}

impl<T: Serialize> Serialize for PerRole<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(AgentRole::ALL.len()))?;
        for (role, value) in self.iter() {
            map.serialize_entry(&role, value)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for PerRole<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for V<T> {
            type Value = PerRole<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table keyed by role name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = PerRoleBuilder::default();
                while let Some(key) = map.next_key::<String>()? {
                    let role = out.role(&key)?;
                    out.set(role, map.next_value()?)?;
                }
                Ok(out.finish())
            }
        }
        deserializer.deserialize_map(V(PhantomData))
    }
}

/// A [`PerRole`] being read from a map: each role at most once, the rest defaulted.
pub(crate) struct PerRoleBuilder<T>(PerRole<Option<T>>);

impl<T> Default for PerRoleBuilder<T> {
    fn default() -> Self {
        Self(PerRole::from_fn(|_| None))
    }
}

impl<T: Default> PerRoleBuilder<T> {
    /// The role a key names; an unknown key is serde's "unknown field" error listing the roles.
    pub(super) fn role<E: de::Error>(&self, key: &str) -> Result<AgentRole, E> {
        use strum::VariantNames;
        AgentRole::from_name(key).ok_or_else(|| E::unknown_field(key, AgentRole::VARIANTS))
    }

    /// Sets `role`'s value; a second value for one role is an error.
    pub(super) fn set<E: de::Error>(&mut self, role: AgentRole, value: T) -> Result<(), E> {
        match self.0.get_mut(role).replace(value) {
            Some(_) => Err(E::duplicate_field(role.as_str())),
            None => Ok(()),
        }
    }

    /// The values read, `T::default()` for the roles not given.
    pub(super) fn finish(self) -> PerRole<T> {
        PerRole(self.0.0.map(Option::unwrap_or_default))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_are_the_serde_names_and_slots_follow_all() {
        for (i, role) in AgentRole::ALL.into_iter().enumerate() {
            assert_eq!(json!(role), json!(role.as_str()));
            assert_eq!(AgentRole::from_name(role.as_str()), Some(role));
            assert_eq!(role as usize, i, "{role} is out of ALL's order");
        }
        assert_eq!(AgentRole::from_name("boss"), None);
    }

    #[test]
    fn serde_is_a_table_by_role_name_with_defaults() {
        let p: PerRole<Vec<u32>> =
            serde_json::from_value(json!({"planner": [1], "synthesizer": [5]})).unwrap();
        assert_eq!((p.get(AgentRole::Planner), p.get(AgentRole::Synthesizer)), (&vec![1], &vec![5]));
        assert!(p.get(AgentRole::Executor).is_empty());
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"planner": [1], "executor": [], "verifier": [], "replanner": [], "synthesizer": [5]})
        );
    }

    #[test]
    fn unknown_and_repeated_roles_are_errors_naming_them() {
        let err = serde_json::from_value::<PerRole<u8>>(json!({"plannr": 1})).unwrap_err().to_string();
        assert!(err.contains("unknown field `plannr`") && err.contains("`synthesizer`"), "{err}");
        let err = serde_json::from_str::<PerRole<u8>>(r#"{"verifier": 1, "verifier": 2}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate field `verifier`"), "{err}");
    }

    #[test]
    fn try_from_fn_stops_at_the_first_error() {
        let mut asked = Vec::new();
        let err = PerRole::try_from_fn(|r| {
            asked.push(r);
            if r == AgentRole::Verifier { Err(r) } else { Ok(()) }
        });
        assert_eq!((err, asked.len()), (Err(AgentRole::Verifier), 3));
        let ok: Result<_, ()> = PerRole::try_from_fn(Ok);
        assert_eq!(ok.unwrap().get(AgentRole::Replanner), &AgentRole::Replanner);
    }

    #[test]
    fn map_iter_and_with() {
        let p = PerRole::from_fn(|r| r.as_str().len()).with(AgentRole::Verifier, 0);
        let lens = p.map(|role, n| format!("{role}={n}"));
        assert_eq!(lens.get(AgentRole::Planner), "planner=7");
        let names: Vec<_> = p.iter().filter(|(_, n)| **n == 0).map(|(r, _)| r).collect();
        assert_eq!(names, [AgentRole::Verifier]);
    }
}
