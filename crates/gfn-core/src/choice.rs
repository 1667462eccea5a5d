//! Typed option values: a closed set of named choices ([`choice!`](crate::choice!)), and the
//! serde glue ([`string_serde!`](crate::string_serde!)) that writes any `Display + FromStr`
//! value as its text, so a configuration file holds `loss = "tb"` while the library holds an enum.
//!
//! Text is parsed once, where it enters (a flag, a TOML file); a bad value is refused there with
//! the field, the value and what is allowed.

/// `"a"`, `"a or b"`, `"a, b or c"`: the allowed values of a choice, as errors name them.
pub fn allowed(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Serialize and deserialize a type through its `Display` and `FromStr` (as a string), so
/// configuration files and checkpoints hold its text.
#[macro_export]
macro_rules! string_serde {
    ($name:ty) => {
        impl $crate::choice::serde::Serialize for $name {
            fn serialize<S: $crate::choice::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> $crate::choice::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::choice::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let text = <::std::string::String as $crate::choice::serde::Deserialize>::deserialize(d)?;
                text.parse()
                    .map_err(<D::Error as $crate::choice::serde::de::Error>::custom)
            }
        }
    };
}

/// A closed set of named choices: the enum, `name()`, `ALL`, `Display`, a `FromStr` whose error
/// names the field, the value and the allowed names, and serde as the name.
///
/// ```
/// gfn_core::choice! {
///     /// How proposals are accepted.
///     pub enum Accept("accept") {
///         /// Keep improvements.
///         Greedy = "greedy",
///         /// Metropolis–Hastings.
///         Mh = "mh",
///     }
/// }
/// assert_eq!("mh".parse::<Accept>().unwrap(), Accept::Mh);
/// assert_eq!(
///     "x".parse::<Accept>().unwrap_err().to_string(),
///     "invalid accept = x: must be greedy or mh"
/// );
/// ```
#[macro_export]
macro_rules! choice {
    ($(#[$meta:meta])* $vis:vis enum $name:ident ($field:literal) {
        $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $( $(#[$vmeta])* $variant ),+ }

        impl $name {
            /// Every choice, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];
            /// The names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name (as in configuration files and on the command line).
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::GfnError;
            fn from_str(s: &str) -> $crate::Result<Self> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err($crate::GfnError::invalid(
                        $field,
                        other,
                        format!("must be {}", $crate::choice::allowed(Self::NAMES)),
                    )),
                }
            }
        }

        $crate::string_serde!($name);
    };
}

#[doc(hidden)]
pub use serde;

#[cfg(test)]
mod tests {
    crate::choice! {
        /// A test choice.
        enum Colour("colour") {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark-blue",
            /// Green.
            Green = "green",
        }
    }

    #[test]
    fn names_round_trip_and_bad_names_are_refused_with_the_field() {
        for &c in Colour::ALL {
            assert_eq!(c.name().parse::<Colour>().unwrap(), c);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Colour>(&format!("\"{c}\"")).unwrap(), c);
        }
        let e = "blue".parse::<Colour>().unwrap_err().to_string();
        assert_eq!(e, "invalid colour = blue: must be red, dark-blue or green");
        let e = serde_json::from_str::<Colour>("\"blue\"").unwrap_err().to_string();
        assert!(e.contains("invalid colour = blue"), "{e}");
    }

    #[test]
    fn allowed_lists_read_as_prose() {
        assert_eq!(super::allowed(&["a"]), "a");
        assert_eq!(super::allowed(&["a", "b"]), "a or b");
        assert_eq!(super::allowed(&["a", "b", "c"]), "a, b or c");
    }
}
