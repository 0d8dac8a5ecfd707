use std::path::Path;

use minijinja::Environment;

use super::MailError;
use crate::config::ConfigError;

/// The messages Keyhold sends. Each has a plain-text template whose first line is
/// `Subject: …`, and an HTML template (auto-escaped) for the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// `link`, `code`, `expires_at`.
    VerifyEmail,
    /// `reset_link`: someone registered with an address that already has an account.
    AccountExists,
    /// `code`, `purpose`, `expires_at`: a second-factor or step-up code.
    TwoFactorCode,
    /// `link`, `code`, `expires_at`.
    PasswordReset,
    /// `how` ("changed" or "reset"), `when`, `reset_link`.
    PasswordChanged,
    /// `new_email`, `when`: sent to the old address after an address change.
    EmailChanged,
    /// `link`, `code`, `expires_at`: an account made by an operator (`keyhold user create`).
    Invite,
    /// `failures`, `until`, `reset_link`: the account's second-factor budget is spent.
    SecondFactorLocked,
    /// `new_email`, `when`, `reset_link`: sent to the address when a change away from it is
    /// asked for (it applies once the new address is verified).
    EmailChangeRequested,
    /// `reset_link`: an address change asked for an address that already has an account.
    AddressInUse,
    /// `how` ("added" or "removed"), `name`, `when`, `reset_link`: a passkey of the account.
    PasskeyChanged,
}

impl Template {
    pub const ALL: [Template; 11] = [
        Template::VerifyEmail,
        Template::AccountExists,
        Template::TwoFactorCode,
        Template::PasswordReset,
        Template::PasswordChanged,
        Template::EmailChanged,
        Template::Invite,
        Template::SecondFactorLocked,
        Template::EmailChangeRequested,
        Template::AddressInUse,
        Template::PasskeyChanged,
    ];

    /// The file stem: `NAME.txt` and `NAME.html` in `mail.templates_dir` replace the built-ins.
    pub fn name(self) -> &'static str {
        match self {
            Template::VerifyEmail => "verify_email",
            Template::AccountExists => "account_exists",
            Template::TwoFactorCode => "two_factor_code",
            Template::PasswordReset => "password_reset",
            Template::PasswordChanged => "password_changed",
            Template::EmailChanged => "email_changed",
            Template::Invite => "invite",
            Template::SecondFactorLocked => "second_factor_locked",
            Template::EmailChangeRequested => "email_change_requested",
            Template::AddressInUse => "address_in_use",
            Template::PasskeyChanged => "passkey_changed",
        }
    }

    fn builtin(self) -> (&'static str, &'static str) {
        match self {
            Template::VerifyEmail => (
                include_str!("templates/verify_email.txt"),
                include_str!("templates/verify_email.html"),
            ),
            Template::AccountExists => (
                include_str!("templates/account_exists.txt"),
                include_str!("templates/account_exists.html"),
            ),
            Template::TwoFactorCode => (
                include_str!("templates/two_factor_code.txt"),
                include_str!("templates/two_factor_code.html"),
            ),
            Template::PasswordReset => (
                include_str!("templates/password_reset.txt"),
                include_str!("templates/password_reset.html"),
            ),
            Template::PasswordChanged => (
                include_str!("templates/password_changed.txt"),
                include_str!("templates/password_changed.html"),
            ),
            Template::EmailChanged => (
                include_str!("templates/email_changed.txt"),
                include_str!("templates/email_changed.html"),
            ),
            Template::SecondFactorLocked => (
                include_str!("templates/second_factor_locked.txt"),
                include_str!("templates/second_factor_locked.html"),
            ),
            Template::Invite => (
                include_str!("templates/invite.txt"),
                include_str!("templates/invite.html"),
            ),
            Template::EmailChangeRequested => (
                include_str!("templates/email_change_requested.txt"),
                include_str!("templates/email_change_requested.html"),
            ),
            Template::AddressInUse => (
                include_str!("templates/address_in_use.txt"),
                include_str!("templates/address_in_use.html"),
            ),
            Template::PasskeyChanged => (
                include_str!("templates/passkey_changed.txt"),
                include_str!("templates/passkey_changed.html"),
            ),
        }
    }
}

/// Every template, parsed once at start so that a broken override stops start-up.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// The built-in templates, each replaced by `dir/NAME.txt` or `dir/NAME.html` when present.
    pub fn load(dir: Option<&Path>) -> Result<Templates, ConfigError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for template in Template::ALL {
            let (text, html) = template.builtin();
            for (ext, builtin) in [("txt", text), ("html", html)] {
                let file_name = format!("{}.{ext}", template.name());
                let source = match dir.map(|d| d.join(&file_name)) {
                    Some(path) if path.exists() => std::fs::read_to_string(&path)
                        .map_err(|e| ConfigError::file(&path, format!("cannot read: {e}")))
                        .and_then(|s| check_source(&path, ext, s))?,
                    _ => builtin.to_string(),
                };
                env.add_template_owned(file_name.clone(), source)
                    .map_err(|e| {
                        let path = dir.map_or_else(
                            || Path::new(&file_name).to_path_buf(),
                            |d| d.join(&file_name),
                        );
                        ConfigError::file(&path, format!("template does not parse: {e}"))
                    })?;
            }
        }
        Ok(Templates { env })
    }

    /// Renders `template`: the subject line, the text body and the HTML body.
    pub fn render(
        &self,
        template: Template,
        context: minijinja::Value,
    ) -> Result<(String, String, String), MailError> {
        let render = |ext: &str| {
            let name = format!("{}.{ext}", template.name());
            self.env
                .get_template(&name)
                .and_then(|t| t.render(&context))
                .map_err(|e| MailError::Template {
                    name,
                    message: e.to_string(),
                })
        };
        let text = render("txt")?;
        let (subject_line, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
        let subject = subject_line
            .strip_prefix("Subject:")
            .unwrap_or(subject_line)
            .trim()
            .replace(['\r', '\n'], " ");
        let body = body.trim_start_matches(['\r', '\n']).to_string();
        Ok((subject, body, render("html")?))
    }
}

fn check_source(path: &Path, ext: &str, source: String) -> Result<String, ConfigError> {
    if ext == "txt" && !source.starts_with("Subject:") {
        return Err(ConfigError::file(
            path,
            "a text mail template must start with a line `Subject: …`",
        ));
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    #[test]
    fn every_builtin_template_renders_with_its_values() {
        let templates = Templates::load(None).unwrap();
        let ctx = context! {
            link => "https://localhost:8443/verify?code=abc",
            reset_link => "https://localhost:8443/reset",
            code => "123456",
            purpose => "sign in",
            expires_at => "2026-11-25T10:00:00Z",
            how => "changed",
            when => "2026-11-25T09:50:00Z",
            new_email => "new@example.com",
            failures => 10,
            until => "2026-11-25T10:50:00Z",
            name => "laptop",
        };
        for template in Template::ALL {
            let (subject, text, html) = templates.render(template, ctx.clone()).unwrap();
            assert!(
                !subject.is_empty() && !subject.contains('\n'),
                "{template:?}"
            );
            assert!(!text.starts_with("Subject"), "{template:?}");
            assert!(html.contains("<p>"), "{template:?}");
        }
    }

    #[test]
    fn html_bodies_escape_their_values() {
        let templates = Templates::load(None).unwrap();
        let ctx = context! { code => "<script>", purpose => "x", expires_at => "y" };
        let (_, text, html) = templates.render(Template::TwoFactorCode, ctx).unwrap();
        assert!(text.contains("<script>"));
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }

    #[test]
    fn a_file_in_the_templates_dir_replaces_the_builtin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("verify_email.txt"),
            "Subject: Welcome to Acme\n\nYour code: {{ code }}\n",
        )
        .unwrap();
        let templates = Templates::load(Some(dir.path())).unwrap();
        let ctx = context! { code => "C0DE", link => "l", expires_at => "e" };
        let (subject, text, html) = templates.render(Template::VerifyEmail, ctx).unwrap();
        assert_eq!(subject, "Welcome to Acme");
        assert_eq!(text.trim_end(), "Your code: C0DE");
        assert!(html.contains("C0DE"), "the built-in HTML stays");
    }

    #[test]
    fn a_broken_override_stops_start_up_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("password_reset.html"), "{% if %}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("password_reset.html"), "{err}");
        std::fs::remove_file(dir.path().join("password_reset.html")).unwrap();
        std::fs::write(dir.path().join("password_reset.txt"), "no subject").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("password_reset.txt"), "{err}");
    }
}
