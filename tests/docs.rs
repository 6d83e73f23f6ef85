//! The documents hold together: every relative link and image in README.md,
//! CHANGELOG.md and docs/ points at a file that exists (and, with a
//! `#fragment`, at a heading that exists), every repository path they name
//! in backticks or in a code block exists, and the README's two commands are
//! the scripts CI runs. No broker needed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Top-level folders whose paths the documents name; a token starting with
/// one of them must exist.
const TREE: [&str; 8] = [
    "src/",
    "tests/",
    "scripts/",
    "docs/",
    "deploy/",
    "dashboards/",
    "examples/",
    ".ci/",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, CHANGELOG.md and every markdown file under docs/.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md"), root().join("CHANGELOG.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/ is readable") {
            let path = entry.expect("a docs/ entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
    }
    docs.sort();
    docs
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to
/// hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A markdown text's lines with whether each is inside a fenced code block
/// (the fence lines themselves left out).
fn lines_with_fences(text: &str) -> Vec<(bool, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else {
            out.push((fenced, line));
        }
    }
    out
}

/// The anchors of a markdown text's headings (outside code blocks), with
/// GitHub's `-1`, `-2` suffixes for repeated ones.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (fenced, line) in lines_with_fences(text) {
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// Every `](target)` of a markdown text (links and images), outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (fenced, line) in lines_with_fences(text) {
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            match after.find(')') {
                Some(end) => {
                    out.push(after[..end].to_string());
                    rest = &after[end..];
                }
                None => break,
            }
        }
    }
    out
}

/// Repository paths a text names: the words of inline code spans and code
/// blocks that start with one of `TREE`'s folders.
fn named_paths(text: &str) -> Vec<String> {
    let mut words: Vec<&str> = Vec::new();
    for (fenced, line) in lines_with_fences(text) {
        if fenced {
            words.extend(line.split_whitespace());
        } else {
            words.extend(
                line.split('`')
                    .skip(1)
                    .step_by(2)
                    .flat_map(str::split_whitespace),
            );
        }
    }
    let mut out = Vec::new();
    for word in words {
        let word = word.trim_matches(|c: char| "\"'`(),;:.".contains(c));
        let word = word.split("::").next().unwrap_or(word);
        if word.contains('<') || word.contains('$') {
            continue;
        }
        if TREE.iter().any(|t| word.starts_with(t)) {
            out.push(word.to_string());
        }
    }
    out
}

/// Whether a repository path exists; `*` matches within one path component.
fn exists(path: &str) -> bool {
    if !path.contains('*') {
        return root().join(path).exists();
    }
    let mut found = vec![root()];
    for part in path.trim_end_matches('/').split('/') {
        let mut next = Vec::new();
        for dir in &found {
            if !part.contains('*') {
                let p = dir.join(part);
                if p.exists() {
                    next.push(p);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if glob_match(part, &name) {
                    next.push(entry.path());
                }
            }
        }
        found = next;
    }
    !found.is_empty()
}

fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len()).any(|i| {
                    name.is_char_boundary(head.len() + i)
                        && glob_match(tail, &name[head.len() + i..])
                })
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_relative_link_points_at_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("a readable document");
        for link in links(&text) {
            let link = link.split_whitespace().next().unwrap_or("");
            if link.is_empty() || link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().expect("a folder").join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", relative(&doc)));
                continue;
            }
            if !fragment.is_empty() {
                let target_text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&target_text).contains(fragment) {
                    broken.push(format!("{}: {link}: no such heading", relative(&doc)));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_path_the_documents_name_exists() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("a readable document");
        for path in named_paths(&text) {
            checked += 1;
            if !exists(&path) {
                missing.push(format!("{}: {path}", relative(&doc)));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the parser broken?"
    );
    assert!(
        missing.is_empty(),
        "paths named in the documents that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_readme_two_commands_are_the_scripts_ci_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Two commands")
        .nth(1)
        .expect("the README has a \"Two commands\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section opens with a sh code block");
    let commands: Vec<&str> = block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        commands,
        ["scripts/quickstart.sh", "scripts/test.sh"],
        "the two commands"
    );
    for command in &commands {
        let meta = std::fs::metadata(root().join(command)).expect("the script exists");
        use std::os::unix::fs::PermissionsExt;
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "{command} is not executable"
        );
    }
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    let runs: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.starts_with("set ") && !l.starts_with("cd "))
        .collect();
    assert_eq!(
        runs,
        [format!("exec bash {}", commands[1])],
        "CI runs exactly the README's test command"
    );
}

#[test]
fn the_link_checks_catch_what_they_should() {
    let text = "# A title\n## Soak: an hour\n## Soak: an hour\n```\n# not a heading\n```\n";
    let a = anchors(text);
    assert!(a.contains("a-title") && a.contains("soak-an-hour") && a.contains("soak-an-hour-1"));
    assert!(!a.contains("not-a-heading"));
    assert_eq!(
        links("see [x](docs/a.md#b) and ![p](bench/p.png)\n```\n[y](z)\n```"),
        ["docs/a.md#b", "bench/p.png"]
    );
    assert_eq!(
        named_paths("run `scripts/soak.sh --minutes 20` or `src/lib.rs`, see `topics.yaml`\n```sh\nscripts/broker.sh start\n```"),
        ["scripts/soak.sh", "src/lib.rs", "scripts/broker.sh"]
    );
    assert!(exists("docs/bench/*.png") && !exists("docs/bench/*.nothing"));
    assert!(exists("src/lib.rs") && !exists("src/no_such_file.rs"));
    assert!(glob_match("soak-*.png", "soak-20min.png") && !glob_match("soak-*.png", "soak.txt"));
}

#[test]
fn the_readme_go_example_is_the_function_the_go_client_test_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let block = readme
        .split("```go\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README has a Go example");
    // The function: from its comment to the first closing brace at the line start.
    let end = block.find("\n}\n").expect("the example defines a function") + 3;
    let function = &block[..end];
    let program = std::fs::read_to_string(root().join("tests/go/readme.go")).expect("readme.go");
    assert!(
        program.contains(function),
        "the README's Go function differs from tests/go/readme.go:\n{function}"
    );
}
