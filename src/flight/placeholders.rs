//! `?` placeholders, as Python's DB-API and JDBC write them, numbered `$1`,
//! `$2`, … in order, which is the form DataFusion binds. Works on SQL tokens,
//! so a `?` inside a string literal or a comment stays as it is.

use std::fmt::Write;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// The SQL with each `?` placeholder replaced by `$n`; unchanged when it has
/// none or does not tokenize (the planner then reports the error).
pub fn number_question_marks(sql: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return sql.to_string();
    };
    let is_question_mark = |token: &Token| matches!(token, Token::Placeholder(text) if text == "?");
    if !tokens.iter().any(is_question_mark) {
        return sql.to_string();
    }
    let mut numbered = String::with_capacity(sql.len() + 8);
    let mut position = 0;
    for token in tokens {
        if is_question_mark(&token) {
            position += 1;
            let _ = write!(numbered, "${position}");
        } else {
            let _ = write!(numbered, "{token}");
        }
    }
    numbered
}

#[cfg(test)]
mod tests {
    use super::number_question_marks;

    #[test]
    fn numbers_placeholders_outside_strings() {
        assert_eq!(
            number_question_marks("SELECT '?' AS q, a FROM t WHERE a > ? AND b = ? -- why?"),
            "SELECT '?' AS q, a FROM t WHERE a > $1 AND b = $2 -- why?"
        );
        assert_eq!(number_question_marks("SELECT 1"), "SELECT 1");
    }
}
