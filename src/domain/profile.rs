//! The JSON documents of `register` and `updateProfile`: parsed key by key, so that an unknown
//! key, a wrong type or a bad value is refused naming exactly that key.

use serde_json::{Map, Value};

use super::Email;
use crate::error::Error;

/// The largest document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// The longest free-text profile value, in characters.
const MAX_TEXT: usize = 200;

/// Profile fields present in a document. For optional fields, `Some(None)` is an explicit
/// `null` (clear it) and `None` is "not in the document".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProfileFields {
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub middle_name: Option<Option<String>>,
    pub preferred_name: Option<Option<String>>,
    pub date_of_birth: Option<Option<String>>,
    pub phone_number: Option<Option<String>>,
    pub country_code: Option<Option<String>>,
    pub address1: Option<Option<String>>,
    pub address2: Option<Option<String>>,
    pub city: Option<Option<String>>,
    pub state: Option<Option<String>>,
    pub zip_code: Option<Option<String>>,
    pub country: Option<Option<String>>,
    pub opt_in_marketing: Option<Option<bool>>,
}

/// `register`'s document.
#[derive(Debug)]
pub struct Registration {
    pub email: Email,
    pub password: String,
    pub profile: ProfileFields,
}

/// `updateProfile`'s document: only what changes.
#[derive(Debug, Default)]
pub struct ProfileUpdate {
    pub email: Option<Email>,
    pub profile: ProfileFields,
}

impl Registration {
    pub fn parse(data: &str) -> Result<Registration, Error> {
        let mut object = parse_object(data)?;
        let email = match object.remove("email") {
            Some(Value::String(s)) => Email::parse("email", &s)?,
            Some(_) => return Err(Error::bad_input("email", "must be a string")),
            None => return Err(Error::bad_input("email", "is required")),
        };
        let password = match object.remove("password") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(Error::bad_input("password", "must be a string")),
            None => return Err(Error::bad_input("password", "is required")),
        };
        let profile = parse_profile(object)?;
        Ok(Registration {
            email,
            password,
            profile,
        })
    }
}

impl ProfileUpdate {
    pub fn parse(data: &str) -> Result<ProfileUpdate, Error> {
        let mut object = parse_object(data)?;
        if object.contains_key("password") {
            return Err(Error::bad_input(
                "password",
                "cannot be changed here: use changePassword",
            ));
        }
        let email = match object.remove("email") {
            Some(Value::String(s)) => Some(Email::parse("email", &s)?),
            Some(_) => return Err(Error::bad_input("email", "must be a string")),
            None => None,
        };
        let profile = parse_profile(object)?;
        Ok(ProfileUpdate { email, profile })
    }

    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.profile == ProfileFields::default()
    }
}

fn parse_object(data: &str) -> Result<Map<String, Value>, Error> {
    if data.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::bad_input(
            "data",
            format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Error::bad_input("data", "must be a JSON object")),
        Err(e) => Err(Error::bad_input("data", format!("is not valid JSON: {e}"))),
    }
}

fn parse_profile(object: Map<String, Value>) -> Result<ProfileFields, Error> {
    let mut fields = ProfileFields::default();
    for (key, value) in object {
        match key.as_str() {
            "username" => fields.username = Some(username(&key, value)?),
            "firstName" => fields.first_name = Some(required_text(&key, value)?),
            "lastName" => fields.last_name = Some(required_text(&key, value)?),
            "middleName" => fields.middle_name = Some(text(&key, value, MAX_TEXT)?),
            "preferredName" => fields.preferred_name = Some(text(&key, value, MAX_TEXT)?),
            "dateOfBirth" => fields.date_of_birth = Some(date(&key, value)?),
            "phoneNumber" => fields.phone_number = Some(phone(&key, value)?),
            "countryCode" => fields.country_code = Some(text(&key, value, 8)?),
            "address1" => fields.address1 = Some(text(&key, value, MAX_TEXT)?),
            "address2" => fields.address2 = Some(text(&key, value, MAX_TEXT)?),
            "city" => fields.city = Some(text(&key, value, MAX_TEXT)?),
            "state" => fields.state = Some(text(&key, value, MAX_TEXT)?),
            "zipCode" => fields.zip_code = Some(text(&key, value, 16)?),
            "country" => fields.country = Some(text(&key, value, MAX_TEXT)?),
            "optInMarketing" => {
                fields.opt_in_marketing = Some(match value {
                    Value::Bool(b) => Some(b),
                    Value::Null => None,
                    _ => return Err(Error::bad_input(key, "must be true or false")),
                })
            }
            _ => return Err(Error::bad_input(key, "is not a known field")),
        }
    }
    Ok(fields)
}

/// A string (or `null`) of at most `max` characters, without control characters.
fn text(key: &str, value: Value, max: usize) -> Result<Option<String>, Error> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => {
            if s.chars().count() > max {
                return Err(Error::bad_input(
                    key,
                    format!("must be at most {max} characters"),
                ));
            }
            if s.chars().any(char::is_control) {
                return Err(Error::bad_input(key, "must not contain control characters"));
            }
            let trimmed = s.trim();
            Ok((!trimmed.is_empty()).then(|| trimmed.to_string()))
        }
        _ => Err(Error::bad_input(key, "must be a string")),
    }
}

fn required_text(key: &str, value: Value) -> Result<String, Error> {
    if value.is_null() {
        return Ok(String::new());
    }
    Ok(text(key, value, MAX_TEXT)?.unwrap_or_default())
}

fn username(key: &str, value: Value) -> Result<String, Error> {
    let Value::String(s) = value else {
        return Err(Error::bad_input(key, "must be a string"));
    };
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !(3..=64).contains(&s.len()) || !ok_chars {
        return Err(Error::bad_input(
            key,
            "must be 3 to 64 characters of letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(s)
}

fn date(key: &str, value: Value) -> Result<Option<String>, Error> {
    let Some(s) = text(key, value, 10)? else {
        return Ok(None);
    };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(&s, &format)
        .map_err(|_| Error::bad_input(key, "must be a date written YYYY-MM-DD"))?;
    Ok(Some(s))
}

fn phone(key: &str, value: Value) -> Result<Option<String>, Error> {
    let Some(s) = text(key, value, 32)? else {
        return Ok(None);
    };
    if !s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'))
    {
        return Err(Error::bad_input(
            key,
            "must hold only digits, spaces and + - ( ) .",
        ));
    }
    Ok(Some(s))
}

/// A username made from an address's local part: lower case, only the allowed characters,
/// at least 3 long. Uniqueness is the caller's business.
pub fn username_from(email: &Email) -> String {
    let mut name: String = email
        .local_part()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(32)
        .collect::<String>()
        .to_lowercase();
    while name.len() < 3 {
        name.push('0');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<impl std::fmt::Debug, Error>) -> String {
        result.unwrap_err().field().unwrap().to_string()
    }

    #[test]
    fn a_full_registration_document_parses() {
        let r = Registration::parse(
            r#"{"email":"Ada@Example.com","password":"pw","username":"ada_l","firstName":"Ada",
               "lastName":"Lovelace","dateOfBirth":"1815-12-10","phoneNumber":"+44 20 7946 0000",
               "optInMarketing":false,"city":null}"#,
        )
        .unwrap();
        assert_eq!(r.email.as_str(), "ada@example.com");
        assert_eq!(r.profile.username.as_deref(), Some("ada_l"));
        assert_eq!(r.profile.date_of_birth, Some(Some("1815-12-10".into())));
        assert_eq!(r.profile.opt_in_marketing, Some(Some(false)));
        assert_eq!(r.profile.city, Some(None));
    }

    #[test]
    fn each_fault_names_its_field() {
        assert_eq!(
            field_of(Registration::parse(r#"{"password":"x"}"#)),
            "email"
        );
        assert_eq!(
            field_of(Registration::parse(r#"{"email":"a@b.co"}"#)),
            "password"
        );
        assert_eq!(
            field_of(Registration::parse(r#"{"email":5,"password":"x"}"#)),
            "email"
        );
        assert_eq!(
            field_of(Registration::parse(r#"{"email":"nope","password":"x"}"#)),
            "email"
        );
        assert_eq!(
            field_of(Registration::parse(
                r#"{"email":"a@b.co","password":"x","admin":true}"#
            )),
            "admin"
        );
        assert_eq!(
            field_of(Registration::parse(
                r#"{"email":"a@b.co","password":"x","firstName":1}"#
            )),
            "firstName"
        );
        assert_eq!(
            field_of(Registration::parse(
                r#"{"email":"a@b.co","password":"x","dateOfBirth":"10/12/1815"}"#
            )),
            "dateOfBirth"
        );
        assert_eq!(
            field_of(Registration::parse(
                r#"{"email":"a@b.co","password":"x","username":"a b"}"#
            )),
            "username"
        );
        assert_eq!(
            field_of(Registration::parse(
                r#"{"email":"a@b.co","password":"x","city":"a\u0007b"}"#
            )),
            "city"
        );
        assert_eq!(field_of(Registration::parse("[1,2]")), "data");
        assert_eq!(field_of(Registration::parse("{not json")), "data");
        let big = format!(
            r#"{{"email":"a@b.co","password":"{}"}}"#,
            "x".repeat(MAX_DOCUMENT_BYTES)
        );
        assert_eq!(field_of(Registration::parse(&big)), "data");
        assert_eq!(
            field_of(ProfileUpdate::parse(r#"{"password":"x"}"#)),
            "password"
        );
    }

    #[test]
    fn a_username_is_made_from_the_local_part() {
        let email = Email::parse("email", "Ada.Lovelace+test@example.com").unwrap();
        assert_eq!(username_from(&email), "ada.lovelacetest");
        let short = Email::parse("email", "a@example.com").unwrap();
        assert_eq!(username_from(&short), "a00");
    }
}
