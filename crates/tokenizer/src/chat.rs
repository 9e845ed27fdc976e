//! Chat templates (Jinja, as shipped in `tokenizer.chat_template`), rendered
//! with minijinja configured like HF transformers' renderer: `trim_blocks`,
//! `lstrip_blocks`, loop controls, Python string methods, `raise_exception`
//! and `strftime_now`.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::TokenizerError;

const TEMPLATE_NAME: &str = "chat_template";

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    pub(crate) fn new(source: &str) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| TokenizerError::Template(describe(&e)))?;
        Ok(Self { env })
    }

    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TokenizerError> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::Template(describe(&e)))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(|e| TokenizerError::Template(describe(&e)))
    }
}

/// Error text including the template line, when known.
fn describe(e: &Error) -> String {
    match e.line() {
        Some(line) => format!("{e} (line {line})"),
        None => e.to_string(),
    }
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `strftime_now(fmt)` as HF provides it to templates (UTC here).
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(&format, secs)
}

/// Formats seconds since the Unix epoch (UTC) with the common strftime
/// directives; unknown directives are copied through.
pub(crate) fn strftime(format: &str, unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let sod = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month_name = MONTHS[(month as usize).saturating_sub(1) % 12];
    let day_name = WEEKDAYS[weekday];
    let (h, m, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(day_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats() {
        // 2024-07-26 15:04:05 UTC, a Friday
        let t = 1_722_006_245;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %m/%d/%y %H:%M:%S %%", t),
            "Friday July 07/26/24 15:04:05 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let src = "{% for m in messages %}{{ m.content.strip() | upper }}{% if m.role.startswith('sys') %}!{% endif %}{% endfor %}\
                   {% if messages|length > 2 %}{{ raise_exception('too many') }}{% endif %}";
        let t = match ChatTemplate::new(src) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let msgs = vec![
            ChatMessage::new("system", "  hi  "),
            ChatMessage::new("user", " yo"),
        ];
        match t.render(&msgs, false, "", "") {
            Ok(s) => assert_eq!(s, "HI!YO"),
            Err(e) => panic!("{e}"),
        }
        let three = vec![msgs[0].clone(), msgs[1].clone(), msgs[1].clone()];
        match t.render(&three, false, "", "") {
            Ok(s) => panic!("expected error, got {s:?}"),
            Err(e) => assert!(e.to_string().contains("too many"), "{e}"),
        }
    }

    #[test]
    fn trim_and_lstrip_blocks_like_hf() {
        let src = "{% for m in messages %}\n    {{ m.role }}\n{% endfor %}";
        let t = match ChatTemplate::new(src) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let msgs = vec![ChatMessage::new("a", ""), ChatMessage::new("b", "")];
        match t.render(&msgs, false, "", "") {
            Ok(s) => assert_eq!(s, "    a\n    b\n"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn bad_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}").is_err());
    }
}
