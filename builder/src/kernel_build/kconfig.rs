//! A small index of the kernel's `Kconfig*` files: where each option is defined, whether a user
//! can set it (has a prompt), and its `depends on` lines. Used only to explain a dropped option
//! ("depends on NET && INET; off: INET"), never to decide anything: kconfig itself decides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::fragment::{Fragment, Value};

/// One definition of an option (an option may be defined in several places, e.g. per arch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// Relative to the source tree.
    pub file: PathBuf,
    pub line: usize,
    pub has_prompt: bool,
    /// `depends on` expressions of the entry, the enclosing `if` blocks and `menu`s of its file.
    pub depends: Vec<String>,
    /// Options that `select` this one (from anywhere in the tree).
    pub selected_by: Vec<String>,
}

/// Option name (without `CONFIG_`) → its definitions.
#[derive(Debug, Default)]
pub struct Index {
    pub defs: BTreeMap<String, Vec<Definition>>,
}

impl Index {
    /// Scans every `Kconfig*` file under `src` (skipping `Documentation`, `tools` and `scripts`)
    /// and, for x86, only `arch/x86` among the architectures.
    pub fn scan(src: &Path, arch_dir: &str) -> Index {
        let mut index = Index::default();
        let mut selects: Vec<(String, String)> = Vec::new();
        let walker = walkdir::WalkDir::new(src)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                let rel = e.path().strip_prefix(src).unwrap_or(e.path());
                let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
                match (parts.next().as_deref(), parts.next().as_deref()) {
                    (Some("Documentation" | "tools" | "scripts" | "samples" | ".git"), _) => false,
                    (Some("arch"), Some(a)) => a == arch_dir || a == "Kconfig",
                    _ => true,
                }
            });
        for entry in walker.flatten() {
            if !entry.file_type().is_file()
                || !entry.file_name().to_string_lossy().starts_with("Kconfig")
            {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let rel = entry.path().strip_prefix(src).unwrap_or(entry.path());
            index.add_file(rel, &text, &mut selects);
        }
        index.link_selects(selects);
        index
    }

    /// Adds one file's definitions; `selects` collects `(selected, by)` pairs for [`Self::link_selects`].
    pub fn add_file(&mut self, rel: &Path, text: &str, selects: &mut Vec<(String, String)>) {
        // Block-level dependencies: `if EXPR` … `endif`, `menu` + `depends on` … `endmenu`.
        let mut blocks: Vec<Option<String>> = Vec::new();
        let mut current: Option<(String, Definition)> = None;
        let mut in_menu_header = false;
        // Inside a help text: the indentation of its first line, once seen. Kconfig ends the text
        // at the first non-blank line indented less than that, so an entry inside a `choice`
        // (indented itself) that follows another entry's help is still seen.
        let mut in_help: Option<Option<usize>> = None;
        let mut lines = text.lines().enumerate().peekable();
        while let Some((i, raw)) = lines.next() {
            // Kconfig continues lines with a trailing backslash.
            let mut line = raw.to_string();
            while line.ends_with('\\') {
                line.pop();
                match lines.next() {
                    Some((_, next)) => line.push_str(next),
                    None => break,
                }
            }
            let trimmed = line.trim();
            if let Some(help_indent) = in_help {
                if trimmed.is_empty() {
                    continue;
                }
                let indent = indentation(raw);
                match help_indent {
                    None if indent > 0 => {
                        in_help = Some(Some(indent));
                        continue;
                    }
                    Some(first) if indent >= first => continue,
                    _ => in_help = None,
                }
            }
            let (word, rest) = trimmed
                .split_once(char::is_whitespace)
                .unwrap_or((trimmed, ""));
            let rest = rest.trim();
            match word {
                "config" | "menuconfig" => {
                    self.finish(current.take());
                    in_menu_header = false;
                    let depends = blocks.iter().flatten().cloned().collect();
                    let def = Definition {
                        file: rel.into(),
                        line: i + 1,
                        has_prompt: false,
                        depends,
                        selected_by: Vec::new(),
                    };
                    current = Some((rest.to_string(), def));
                }
                "choice" | "comment" | "source" | "mainmenu" => {
                    self.finish(current.take());
                    in_menu_header = false;
                }
                "menu" => {
                    self.finish(current.take());
                    blocks.push(None);
                    in_menu_header = true;
                }
                "if" => {
                    self.finish(current.take());
                    in_menu_header = false;
                    blocks.push(Some(strip_comment(rest).to_string()));
                }
                "endif" | "endmenu" => {
                    self.finish(current.take());
                    in_menu_header = false;
                    blocks.pop();
                }
                "endchoice" => self.finish(current.take()),
                "help" | "---help---" => in_help = Some(None),
                "depends" => {
                    let expr =
                        strip_comment(rest.strip_prefix("on").unwrap_or(rest).trim()).to_string();
                    if let Some((_, def)) = current.as_mut() {
                        def.depends.push(expr);
                    } else if in_menu_header {
                        if let Some(top) = blocks.last_mut() {
                            *top = Some(match top.take() {
                                Some(prev) => format!("{prev} && {expr}"),
                                None => expr,
                            });
                        }
                    }
                }
                "bool" | "tristate" | "string" | "int" | "hex" | "prompt" | "def_bool"
                | "def_tristate" => {
                    if let Some((_, def)) = current.as_mut() {
                        if word != "def_bool" && word != "def_tristate" && rest.starts_with('"') {
                            def.has_prompt = true;
                        }
                    }
                }
                "select" => {
                    if let Some((name, _)) = current.as_ref() {
                        let target = rest.split_whitespace().next().unwrap_or("").to_string();
                        selects.push((target, name.clone()));
                    }
                }
                _ => {}
            }
        }
        self.finish(current);
    }

    fn finish(&mut self, current: Option<(String, Definition)>) {
        if let Some((name, def)) = current {
            self.defs.entry(name).or_default().push(def);
        }
    }

    pub fn link_selects(&mut self, selects: Vec<(String, String)>) {
        for (target, by) in selects {
            if let Some(defs) = self.defs.get_mut(&target) {
                for def in defs.iter_mut() {
                    if !def.selected_by.contains(&by) {
                        def.selected_by.push(by.clone());
                    }
                }
            }
        }
    }

    /// Why `name` (with or without `CONFIG_`) may have been dropped, given the final `.config`.
    pub fn explain(&self, name: &str, final_config: &Fragment) -> String {
        let bare = name.strip_prefix("CONFIG_").unwrap_or(name);
        let Some(defs) = self.defs.get(bare) else {
            return "no such option in this kernel's Kconfig (misspelt, or removed in this version)".into();
        };
        let values = final_config.values();
        let is_on = |sym: &str| {
            matches!(
                values.get(format!("CONFIG_{sym}").as_str()),
                Some(Value::Yes | Value::Module)
            )
        };
        let mut parts = Vec::new();
        for def in defs {
            let mut text = format!("{}:{}", def.file.display(), def.line);
            if !def.depends.is_empty() {
                let expr = def
                    .depends
                    .iter()
                    .map(|d| paren(d))
                    .collect::<Vec<_>>()
                    .join(" && ");
                text.push_str(&format!(": depends on {expr}"));
                let all = def.depends.join(" ");
                let off: Vec<&str> = symbols(&all).into_iter().filter(|s| !is_on(s)).collect();
                if !off.is_empty() {
                    text.push_str(&format!("; off: {}", off.join(", ")));
                }
            }
            if !def.has_prompt {
                let by = if def.selected_by.is_empty() {
                    "nothing here".to_string()
                } else {
                    def.selected_by.join(", ")
                };
                text.push_str(&format!(
                    "; has no prompt: set only when selected (by {by})"
                ));
            } else if !def.selected_by.is_empty() {
                // A prompt does not stop a `select`: name who forces it on.
                let on: Vec<&str> = def
                    .selected_by
                    .iter()
                    .map(String::as_str)
                    .filter(|s| is_on(s))
                    .collect();
                if !on.is_empty() {
                    text.push_str(&format!("; forced on by select from {}", on.join(", ")));
                }
            }
            parts.push(text);
        }
        parts.join(" | ")
    }
}

/// Width of a line's leading whitespace, a tab counting to the next multiple of 8 (as kconfig).
fn indentation(line: &str) -> usize {
    let mut width = 0;
    for c in line.chars() {
        match c {
            ' ' => width += 1,
            '\t' => width = (width / 8 + 1) * 8,
            _ => break,
        }
    }
    width
}

fn paren(expr: &str) -> String {
    if expr.contains("||") {
        format!("({expr})")
    } else {
        expr.to_string()
    }
}

fn strip_comment(s: &str) -> &str {
    s.split('#').next().unwrap_or(s).trim()
}

/// The option names an expression mentions (`NET && !X86_32 || FOO=y` → NET, X86_32, FOO),
/// sorted and without duplicates; `y`/`m`/`n` and numbers are not names.
pub fn symbols(expr: &str) -> Vec<&str> {
    let mut out: Vec<&str> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            !w.is_empty()
                && w.chars().any(|c| c.is_ascii_uppercase())
                && !w.chars().all(|c| c.is_ascii_digit())
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_KCONFIG: &str = r#"
menu "Networking"
	depends on NET

config UNIX_DIAG
	tristate "UNIX: socket monitoring interface"
	depends on UNIX
	help
	  Support for UNIX socket monitoring.
	  config NOT_AN_OPTION inside help

if INET
config INET_UDP_DIAG
	tristate "UDP: socket monitoring interface"
	depends on INET_DIAG && (IPV6 || IPV6=n)  # comment
	select SOCK_HELPER
endif

endmenu

config SOCK_HELPER
	bool
"#;

    fn index() -> Index {
        let mut idx = Index::default();
        let mut selects = Vec::new();
        idx.add_file(Path::new("net/Kconfig"), NET_KCONFIG, &mut selects);
        idx.link_selects(selects);
        idx
    }

    /// security/Kconfig.hardening's shape: indented entries of a `choice`, each after the help
    /// text of the one before (kconfig ends a help text at a line indented less than its first).
    #[test]
    fn indented_choice_entries_after_a_help_text_are_options() {
        const HARDENING: &str = "choice\n\tprompt \"Initialize\"\n\tdefault INIT_STACK_ALL_ZERO\n\thelp\n\t  Text.\n\n\tconfig INIT_STACK_NONE\n\t\tbool \"none\"\n\t\thelp\n\t\t  Disable.\n\t\t  config NOT_AN_OPTION either\n\n\tconfig INIT_STACK_ALL_ZERO\n\t\tbool \"zero\"\n\t\thelp\n\t\t  Zero.\n\nendchoice\n";
        let mut idx = Index::default();
        let mut selects = Vec::new();
        idx.add_file(
            Path::new("security/Kconfig.hardening"),
            HARDENING,
            &mut selects,
        );
        assert_eq!(idx.defs["INIT_STACK_NONE"][0].line, 7);
        assert_eq!(idx.defs["INIT_STACK_ALL_ZERO"][0].line, 13);
        assert!(!idx.defs.contains_key("NOT_AN_OPTION"));
    }

    #[test]
    fn definitions_carry_block_and_entry_dependencies() {
        let idx = index();
        assert!(!idx.defs.contains_key("NOT_AN_OPTION"));
        let unix = &idx.defs["UNIX_DIAG"][0];
        assert_eq!((unix.line, unix.has_prompt), (5, true));
        assert_eq!(unix.depends, ["NET", "UNIX"]);
        let udp = &idx.defs["INET_UDP_DIAG"][0];
        assert_eq!(
            udp.depends,
            ["NET", "INET", "INET_DIAG && (IPV6 || IPV6=n)"]
        );
        let helper = &idx.defs["SOCK_HELPER"][0];
        assert!(helper.depends.is_empty() && !helper.has_prompt);
        assert_eq!(helper.selected_by, ["INET_UDP_DIAG"]);
    }

    #[test]
    fn explanation_names_the_options_that_are_off() {
        let idx = index();
        let cfg = Fragment::parse(
            "CONFIG_NET=y\nCONFIG_INET=y\n# CONFIG_INET_DIAG is not set\n",
            Path::new(".config"),
        )
        .unwrap();
        assert_eq!(
            idx.explain("CONFIG_INET_UDP_DIAG", &cfg),
            "net/Kconfig:13: depends on NET && INET && (INET_DIAG && (IPV6 || IPV6=n)); off: INET_DIAG, IPV6"
        );
        assert_eq!(
            idx.explain("CONFIG_UNIX_DIAG", &cfg),
            "net/Kconfig:5: depends on NET && UNIX; off: UNIX"
        );
        assert_eq!(
            idx.explain("CONFIG_SOCK_HELPER", &cfg),
            "net/Kconfig:21; has no prompt: set only when selected (by INET_UDP_DIAG)"
        );
        assert!(idx
            .explain("CONFIG_UNIX_DAIG", &cfg)
            .starts_with("no such option"));
    }

    #[test]
    fn symbols_of_an_expression() {
        assert_eq!(
            symbols("NET && !X86_32 || (FOO=y && BAR != m) || 64BIT"),
            ["64BIT", "BAR", "FOO", "NET", "X86_32"]
        );
    }
}
