//! `${NAME}` interpolation in `run`, `health.exec` and `env` values.
//!
//! tandem runs commands without a shell, so it substitutes variables itself: `${NAME}` is
//! replaced by the instance's variable, `$$` is a literal `$`, any other `$` is kept as is.
//! `$NAME` without braces is refused rather than passed through, because without a shell
//! nothing would ever expand it and the program would receive the literal text. The same
//! scanner checks the syntax at validation time and substitutes at launch.

/// One syntax problem in an interpolated string: byte offset and length inside the string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InterpolationError {
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) message: String,
    pub(crate) hint: String,
}

enum Piece<'t> {
    Text(&'t str),
    Variable(&'t str),
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `name` is a valid variable name: a letter or `_`, then letters, digits or `_`.
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

fn scan(text: &str) -> Result<Vec<Piece<'_>>, InterpolationError> {
    let mut pieces = Vec::new();
    let mut literal_start = 0;
    let mut index = 0;
    let bytes = text.as_bytes();
    while index < bytes.len() {
        if bytes[index] != b'$' {
            index += 1;
            continue;
        }
        match bytes.get(index + 1) {
            Some(b'$') => {
                pieces.push(Piece::Text(&text[literal_start..=index]));
                index += 2;
                literal_start = index;
            }
            Some(b'{') => {
                let name_start = index + 2;
                let Some(close) = text[name_start..].find('}') else {
                    return Err(InterpolationError {
                        offset: index,
                        len: 2,
                        message: "unterminated '${'".into(),
                        hint: "close it with '}', as in ${PORT}; write '$$' for a literal '$'"
                            .into(),
                    });
                };
                let name = &text[name_start..name_start + close];
                if !is_variable_name(name) {
                    return Err(InterpolationError {
                        offset: index,
                        len: close + 3,
                        message: format!("'{name}' is not a valid variable name"),
                        hint: "variable names are letters, digits and '_', not starting with a digit, as in ${PORT}".into(),
                    });
                }
                pieces.push(Piece::Text(&text[literal_start..index]));
                pieces.push(Piece::Variable(name));
                index = name_start + close + 1;
                literal_start = index;
            }
            Some(&next) if is_name_start(next as char) => {
                let name_len = text[index + 1..]
                    .find(|c: char| !is_name_char(c))
                    .unwrap_or(text.len() - index - 1);
                let name = &text[index + 1..index + 1 + name_len];
                return Err(InterpolationError {
                    offset: index,
                    len: name_len + 1,
                    message: format!("'${name}' is not interpolated (there is no shell)"),
                    hint: format!("write '${{{name}}}', or '$${name}' for a literal '$'"),
                });
            }
            _ => index += 1,
        }
    }
    pieces.push(Piece::Text(&text[literal_start..]));
    Ok(pieces)
}

/// Checks the `${...}` syntax of `text` and returns the variables it names.
pub(crate) fn check(text: &str) -> Result<Vec<String>, InterpolationError> {
    Ok(scan(text)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Variable(name) => Some(name.to_string()),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Replaces `${NAME}` with `lookup(NAME)` and `$$` with `$`.
///
/// Errors: a syntax problem (unterminated `${`, a bad name, `$NAME` without braces) or a
/// variable that `lookup` does not know ("variable 'X' is not set").
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let pieces = scan(text).map_err(|error| format!("{}; {}", error.message, error.hint))?;
    let mut out = String::with_capacity(text.len());
    for piece in pieces {
        match piece {
            Piece::Text(literal) => out.push_str(literal),
            Piece::Variable(name) => match lookup(name) {
                Some(value) => out.push_str(&value),
                None => return Err(format!("variable '{name}' is not set")),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "PORT").then(|| "8080".to_string())
    }

    #[test]
    fn substitutes_and_escapes() {
        assert_eq!(
            interpolate("serve --port ${PORT} --cost $$5 a$ b", &lookup).as_deref(),
            Ok("serve --port 8080 --cost $5 a$ b")
        );
        assert_eq!(interpolate("$$PORT", &lookup).as_deref(), Ok("$PORT"));
    }

    #[test]
    fn reports_problems() {
        assert_eq!(
            interpolate("${NOPE}", &lookup),
            Err("variable 'NOPE' is not set".to_string())
        );
        assert!(
            interpolate("${PORT", &lookup)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            interpolate("${1X}", &lookup)
                .unwrap_err()
                .contains("not a valid")
        );
        assert!(
            interpolate("$PORT", &lookup)
                .unwrap_err()
                .contains("not interpolated")
        );
    }

    #[test]
    fn check_lists_variables_and_positions() {
        assert_eq!(
            check("a ${X} ${Y_2}"),
            Ok(vec!["X".to_string(), "Y_2".to_string()])
        );
        let error = check("run ${bad-name}").unwrap_err();
        assert_eq!((error.offset, error.len), (4, 11));
    }
}
