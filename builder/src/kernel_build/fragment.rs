//! Kconfig fragments and `.config` files: parse them, merge them over a base, and check that every
//! option a fragment asks for survived `make olddefconfig` (kconfig silently drops options whose
//! dependencies are missing).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {what}: {text:?} (expected `CONFIG_NAME=value` or `# CONFIG_NAME is not set`)")]
    Syntax {
        path: PathBuf,
        line: usize,
        what: &'static str,
        text: String,
    },
    #[error("{path}:{line}: {name} is already set at line {first} of the same file")]
    Duplicate {
        path: PathBuf,
        line: usize,
        name: String,
        first: usize,
    },
}

/// The value a line gives an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `=n` or `# CONFIG_X is not set`.
    No,
    Yes,
    Module,
    /// `="text"`, unescaped.
    Str(String),
    /// Numbers and hex, kept as written.
    Raw(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::No => f.write_str("n"),
            Value::Yes => f.write_str("y"),
            Value::Module => f.write_str("m"),
            Value::Str(s) => write!(f, "\"{}\"", escape(s)),
            Value::Raw(s) => f.write_str(s),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Where a line came from, for messages: `kernel/migration.config:12`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub path: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// One option set by a fragment. `name` carries the `CONFIG_` prefix, as in `.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub value: Value,
    pub origin: Origin,
}

impl Entry {
    /// The line as kconfig writes it.
    pub fn line(&self) -> String {
        render(&self.name, &self.value)
    }
}

/// `CONFIG_X=y`, or `# CONFIG_X is not set` for `n`.
pub fn render(name: &str, value: &Value) -> String {
    match value {
        Value::No => format!("# {name} is not set"),
        v => format!("{name}={v}"),
    }
}

/// A parsed fragment (or `.config`): its entries in file order.
#[derive(Debug, Clone, Default)]
pub struct Fragment {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

impl Fragment {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let Some((name, value)) = parse_line(raw).map_err(|what| Error::Syntax {
                path: path.into(),
                line,
                what,
                text: raw.into(),
            })?
            else {
                continue;
            };
            if let Some(&first) = seen.get(&name) {
                return Err(Error::Duplicate {
                    path: path.into(),
                    line,
                    name,
                    first,
                });
            }
            seen.insert(name.clone(), line);
            entries.push(Entry {
                name,
                value,
                origin: Origin {
                    path: path.into(),
                    line,
                },
            });
        }
        Ok(Fragment {
            path: path.into(),
            entries,
        })
    }

    /// Name → value, for looking options up in a final `.config`.
    pub fn values(&self) -> BTreeMap<&str, &Value> {
        self.entries
            .iter()
            .map(|e| (e.name.as_str(), &e.value))
            .collect()
    }
}

/// One line: `Ok(None)` for blanks and comments, `Err(what)` for anything malformed.
fn parse_line(raw: &str) -> Result<Option<(String, Value)>, &'static str> {
    let line = raw.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if let Some(comment) = line.strip_prefix('#') {
        // `# CONFIG_X is not set` is a value; every other comment is a comment.
        let comment = comment.trim();
        if let Some(name) = comment.strip_suffix(" is not set") {
            let name = name.trim();
            if name.starts_with("CONFIG_") {
                check_name(name)?;
                return Ok(Some((name.to_string(), Value::No)));
            }
        }
        return Ok(None);
    }
    let (name, value) = line.split_once('=').ok_or("not an assignment")?;
    let name = name.trim();
    if !name.starts_with("CONFIG_") {
        return Err("option name must start with CONFIG_");
    }
    check_name(name)?;
    let value = value.trim();
    let value = match value {
        "y" => Value::Yes,
        "m" => Value::Module,
        "n" => Value::No,
        v if v.starts_with('"') => {
            Value::Str(unquote(v).ok_or("unterminated or malformed string")?)
        }
        v if is_number(v) => Value::Raw(v.to_string()),
        "" => return Err("empty value"),
        _ => return Err("value must be y, m, n, a number or a \"string\""),
    };
    Ok(Some((name.to_string(), value)))
}

fn check_name(name: &str) -> Result<(), &'static str> {
    let rest = &name["CONFIG_".len()..];
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("bad option name");
    }
    Ok(())
}

fn is_number(v: &str) -> bool {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    let digits = v.strip_prefix('-').unwrap_or(v);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// `"a \"b\" \\c"` → `a "b" \c`; `None` unless the closing quote ends the value.
fn unquote(v: &str) -> Option<String> {
    let mut chars = v.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(out),
            c => out.push(c),
        }
    }
}

/// Fragments merged in order: a later fragment overrides an earlier one (as `merge_config.sh` does).
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub entries: BTreeMap<String, Entry>,
    /// `(earlier, later)` pairs where a later fragment changed a value an earlier one set.
    pub overrides: Vec<(Entry, Entry)>,
}

pub fn merge(fragments: &[Fragment]) -> Merged {
    let mut merged = Merged::default();
    for entry in fragments.iter().flat_map(|f| &f.entries) {
        if let Some(old) = merged.entries.insert(entry.name.clone(), entry.clone()) {
            if old.value != entry.value {
                merged.overrides.push((old, entry.clone()));
            }
        }
    }
    merged
}

impl Merged {
    /// The base `.config` with every option the fragments set removed, and the fragments' lines
    /// appended: the input `make olddefconfig` completes.
    pub fn apply(&self, base: &str) -> String {
        let mut out = String::with_capacity(base.len() + self.entries.len() * 32);
        for line in base.lines() {
            let keep = match parse_line(line) {
                Ok(Some((name, _))) => !self.entries.contains_key(&name),
                _ => true,
            };
            if keep {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("# --- merged by drove kernel build\n");
        for entry in self.entries.values() {
            out.push_str(&entry.line());
            out.push('\n');
        }
        out
    }

    /// Every option whose final value is not what its fragment asked for.
    pub fn dropped(&self, final_config: &Fragment) -> Vec<Dropped> {
        let have = final_config.values();
        self.entries
            .values()
            .filter_map(|want| {
                let got = have.get(want.name.as_str()).copied();
                let ok = match (&want.value, got) {
                    (Value::No, None | Some(Value::No)) => true,
                    (w, Some(g)) => w == g,
                    (_, None) => false,
                };
                (!ok).then(|| Dropped {
                    wanted: want.clone(),
                    got: got.cloned(),
                })
            })
            .collect()
    }
}

/// An option kconfig did not keep as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub wanted: Entry,
    /// The final value; `None` when the option is absent (its menu or dependencies are off).
    pub got: Option<Value>,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = match &self.got {
            None => "absent (dependencies not met)".to_string(),
            Some(Value::No) => "not set".to_string(),
            Some(v) => format!("{v}"),
        };
        write!(f, "{}: {} → {got}", self.wanted.origin, self.wanted.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(text: &str, name: &str) -> Fragment {
        Fragment::parse(text, Path::new(name)).unwrap()
    }

    #[test]
    fn parses_every_value_kind() {
        let f = frag(
            "# a comment\n\nCONFIG_A=y\nCONFIG_B=m\nCONFIG_C=\"say \\\"hi\\\" \\\\ok\"\n# CONFIG_D is not set\n\
             CONFIG_E=0x1f\nCONFIG_F=-3\nCONFIG_G=n\n  # indented comment\n#CONFIG_H is not set\n",
            "x.config",
        );
        let v: Vec<(&str, &Value, usize)> = f
            .entries
            .iter()
            .map(|e| (e.name.as_str(), &e.value, e.origin.line))
            .collect();
        assert_eq!(
            v,
            [
                ("CONFIG_A", &Value::Yes, 3),
                ("CONFIG_B", &Value::Module, 4),
                ("CONFIG_C", &Value::Str("say \"hi\" \\ok".into()), 5),
                ("CONFIG_D", &Value::No, 6),
                ("CONFIG_E", &Value::Raw("0x1f".into()), 7),
                ("CONFIG_F", &Value::Raw("-3".into()), 8),
                ("CONFIG_G", &Value::No, 9),
                ("CONFIG_H", &Value::No, 11),
            ]
        );
        // Rendering round-trips through the parser.
        let text: String = f.entries.iter().map(|e| e.line() + "\n").collect();
        let again = frag(&text, "y.config");
        assert_eq!(again.values(), f.values());
        assert!(
            text.contains("CONFIG_C=\"say \\\"hi\\\" \\\\ok\"\n")
                && text.contains("# CONFIG_G is not set\n")
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        for (text, what) in [
            ("CONFIG_A=y\nCONFIG_B\n", "not an assignment"),
            ("CONFIG_A=y\nFOO=y\n", "must start with CONFIG_"),
            ("CONFIG_A=y\nCONFIG_B=yes\n", "value must be"),
            ("CONFIG_A=y\nCONFIG_B=\"open\n", "unterminated"),
            ("CONFIG_A=y\nCONFIG_B=\n", "empty value"),
            ("CONFIG_A=y\nCONFIG_B-C=y\n", "bad option name"),
            (
                "CONFIG_A=y\nCONFIG_B=\"a\" x\n",
                "unterminated or malformed",
            ),
        ] {
            let err = Fragment::parse(text, Path::new("kernel/x.config"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("kernel/x.config:2: "), "{err}");
            assert!(err.contains(what), "{text:?}: {err}");
        }
        let err = Fragment::parse("CONFIG_A=y\n\nCONFIG_A=n\n", Path::new("f"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "f:3: CONFIG_A is already set at line 1 of the same file"
        );
        let err = Fragment::load(Path::new("/nonexistent/drove.config"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "cannot read /nonexistent/drove.config");
    }

    #[test]
    fn later_fragment_wins_and_overrides_are_reported() {
        let a = frag("CONFIG_A=y\nCONFIG_B=y\n", "a.config");
        let b = frag(
            "# CONFIG_B is not set\nCONFIG_A=y\nCONFIG_C=\"x\"\n",
            "b.config",
        );
        let m = merge(&[a, b]);
        assert_eq!(m.entries["CONFIG_B"].value, Value::No);
        assert_eq!(m.entries["CONFIG_B"].origin.to_string(), "b.config:1");
        assert_eq!(m.entries["CONFIG_A"].origin.to_string(), "b.config:2");
        assert_eq!(m.overrides.len(), 1, "same value again is not an override");
        assert_eq!(m.overrides[0].0.origin.to_string(), "a.config:2");
    }

    #[test]
    fn apply_replaces_base_lines_and_appends() {
        let base =
            "#\n# Automatically generated\n#\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_Z=y\n";
        let m = merge(&[frag("CONFIG_B=y\n# CONFIG_A is not set\n", "f")]);
        let out = m.apply(base);
        assert_eq!(
            out,
            "#\n# Automatically generated\n#\nCONFIG_Z=y\n# --- merged by drove kernel build\n# CONFIG_A is not set\nCONFIG_B=y\n"
        );
    }

    #[test]
    fn dropped_options_are_named_with_their_fragment_line() {
        let m = merge(&[frag(
            "CONFIG_NET=y\nCONFIG_UNIX_DIAG=y\n# CONFIG_MODULES is not set\nCONFIG_GONE=n\nCONFIG_E1000=y\nCONFIG_LV=\"-drove\"\nCONFIG_N=64\n",
            "kernel/migration.config",
        )]);
        // olddefconfig kept NET, turned MODULES off by omission, demoted E1000 to a module,
        // dropped UNIX_DIAG (its dependency is off) and changed a string.
        let final_config = frag(
            "CONFIG_NET=y\n# CONFIG_UNIX_DIAG is not set\nCONFIG_E1000=m\nCONFIG_LV=\"\"\nCONFIG_N=64\n",
            ".config",
        );
        let dropped = m.dropped(&final_config);
        let lines: Vec<String> = dropped.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "kernel/migration.config:5: CONFIG_E1000=y → m",
                "kernel/migration.config:6: CONFIG_LV=\"-drove\" → \"\"",
                "kernel/migration.config:2: CONFIG_UNIX_DIAG=y → not set",
            ]
        );
        let absent = m.dropped(&frag("CONFIG_NET=y\n", ".config"));
        assert!(absent.iter().any(|d| d.to_string()
            == "kernel/migration.config:2: CONFIG_UNIX_DIAG=y → absent (dependencies not met)"));
        assert!(merge(&[frag("CONFIG_NET=y\n", "f")])
            .dropped(&frag("CONFIG_NET=y\n", ".config"))
            .is_empty());
    }
}
