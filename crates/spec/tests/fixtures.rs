//! Golden fixtures for the system file.
//!
//! `fixtures/valid/NAME.toml` must validate in every environment; the JSON of its `dev`
//! environment must equal `NAME.json`, and its TOML rendering must resolve back to the same
//! system. `fixtures/invalid/NAME.toml` must fail; its rendered diagnostics must equal
//! `NAME.expected`. A first line `# env: NAME` resolves that environment instead of
//! validating all. The fixture folder's path is written `$DIR` so the expected files do not
//! depend on the machine. `BLESS=1 cargo test -p tandem-spec --test fixtures` rewrites them.

use std::path::{Path, PathBuf};

fn fixtures(kind: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    (dir, files)
}

fn blessing() -> bool {
    std::env::var_os("BLESS").is_some_and(|value| value == "1")
}

/// Compares `actual` with the file at `path`, or rewrites it when blessing; returns a
/// failure description.
fn compare(path: &Path, actual: &str) -> Option<String> {
    if blessing() {
        std::fs::write(path, actual).expect("write expected file");
        return None;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    (expected != actual).then(|| {
        format!(
            "--- {} differs (BLESS=1 to accept)\n--- expected:\n{expected}\n--- actual:\n{actual}",
            path.display()
        )
    })
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn valid_fixtures() {
    let (dir, files) = fixtures("valid");
    assert!(files.len() >= 4, "expected at least 4 valid fixtures");
    let dir_text = dir.display().to_string();
    let mut failures = Vec::new();
    for path in &files {
        let name = name_of(path);
        let text = std::fs::read_to_string(path).expect("read fixture");
        let systems = match tandem_spec::validate_all(&name, &text, &dir) {
            Ok(systems) => systems,
            Err(diagnostics) => {
                failures.push(format!("{name} should be valid:\n{diagnostics}"));
                continue;
            }
        };
        for system in &systems {
            let rendered = tandem_spec::render_toml(system);
            match tandem_spec::resolve(&name, &rendered, &dir, &system.env) {
                Ok(again) if &again == system => {}
                Ok(again) => failures.push(format!(
                    "{name} [{}]: render_toml does not round-trip:\n{rendered}\n{again:#?}",
                    system.env
                )),
                Err(diagnostics) => failures.push(format!(
                    "{name} [{}]: render_toml output is invalid:\n{rendered}\n{diagnostics}",
                    system.env
                )),
            }
        }
        let dev = systems
            .iter()
            .find(|s| s.env == "dev")
            .expect("dev environment");
        let json = tandem_spec::render_json(dev).replace(&dir_text, "$DIR");
        failures.extend(compare(&path.with_extension("json"), &json));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_fixtures() {
    let (dir, files) = fixtures("invalid");
    assert!(files.len() >= 25, "expected at least 25 invalid fixtures");
    let dir_text = dir.display().to_string();
    let mut failures = Vec::new();
    for path in &files {
        let name = name_of(path);
        let text = std::fs::read_to_string(path).expect("read fixture");
        let env = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# env: "))
            .map(str::trim);
        let result = match env {
            Some(env) => tandem_spec::resolve(&name, &text, &dir, env).map(|_| ()),
            None => tandem_spec::validate_all(&name, &text, &dir).map(|_| ()),
        };
        let Err(diagnostics) = result else {
            failures.push(format!("{name} should be invalid but validated"));
            continue;
        };
        let count = diagnostics.count();
        let rendered = format!(
            "{diagnostics}\n{count} error{}\n",
            if count == 1 { "" } else { "s" }
        )
        .replace(&dir_text, "$DIR");
        failures.extend(compare(&path.with_extension("expected"), &rendered));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
