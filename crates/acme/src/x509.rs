//! The few facts of a certificate the scheduler and status need (validity
//! and issuer), read from its DER with a minimal reader: walking the
//! TBSCertificate's first fields needs no full X.509 parser.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What status and renewal need to know of a served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The issuer's common name (or organisation), as shown in status.
    pub issuer: String,
}

impl CertFacts {
    /// Two thirds into the lifetime: when renewal is due.
    pub fn renewal_due(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime * 2 / 3
    }
}

/// Reads validity and issuer from a certificate's DER.
pub fn facts(der: &[u8]) -> Option<CertFacts> {
    let (_, certificate) = Der(der).next(0x30)?;
    let (_, mut tbs) = Der(certificate).next(0x30)?;
    let mut fields = Der(tbs);
    if fields.0.first() == Some(&0xa0) {
        fields.any()?; // version
    }
    fields.next(0x02)?; // serial
    fields.next(0x30)?; // signature algorithm
    let issuer = fields.next(0x30)?.1;
    let validity = fields.next(0x30)?.1;
    tbs = validity;
    let mut times = Der(tbs);
    let not_before = time(times.any()?)?;
    let not_after = time(times.any()?)?;
    Some(CertFacts {
        not_before,
        not_after,
        issuer: issuer_name(issuer),
    })
}

/// A cursor over DER elements.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element if it has tag `tag`: (tag, contents).
    fn next(&mut self, tag: u8) -> Option<(u8, &'a [u8])> {
        let element = self.any()?;
        (element.0 == tag).then_some(element)
    }

    fn any(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let length = rest[..count]
                .iter()
                .fold(0usize, |n, &b| (n << 8) | usize::from(b));
            (length, &rest[count..])
        };
        if rest.len() < length {
            return None;
        }
        let (contents, rest) = rest.split_at(length);
        self.0 = rest;
        Some((tag, contents))
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time((tag, contents): (u8, &[u8])) -> Option<SystemTime> {
    let text = std::str::from_utf8(contents).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |at: usize| -> Option<i64> { rest.get(at..at + 2)?.parse().ok() };
    let days = days_from_civil(year, field(0)?, field(2)?);
    let seconds = days * 86_400 + field(4)? * 3600 + field(6)? * 60 + field(8)?;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The issuer's CN, else its O, else "unknown issuer".
fn issuer_name(name: &[u8]) -> String {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    const ORGANISATION: &[u8] = &[0x55, 0x04, 0x0a];
    let mut found: (Option<String>, Option<String>) = (None, None);
    let mut sets = Der(name);
    while let Some((0x31, set)) = sets.any() {
        let mut attributes = Der(set);
        while let Some((0x30, attribute)) = attributes.any() {
            let mut parts = Der(attribute);
            let (Some((0x06, oid)), Some((_, value))) = (parts.any(), parts.any()) else {
                continue;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match oid {
                COMMON_NAME => found.0 = Some(value),
                ORGANISATION => found.1 = Some(value),
                _ => {}
            }
        }
    }
    found
        .0
        .or(found.1)
        .unwrap_or_else(|| "unknown issuer".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_and_issuer_are_read_from_a_real_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2024, 2, 29);
        params.not_after = rcgen::date_time_ymd(2051, 1, 1);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Test Org");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Issuer");
        let cert = params.self_signed(&key).expect("cert");
        let facts = facts(cert.der()).expect("facts");
        assert_eq!(facts.issuer, "Test Issuer");
        assert_eq!(
            facts.not_before,
            UNIX_EPOCH + Duration::from_secs(1_709_164_800)
        );
        assert_eq!(
            facts.not_after,
            UNIX_EPOCH + Duration::from_secs(2_556_144_000)
        );
        let due = facts.renewal_due();
        assert!(due > facts.not_before && due < facts.not_after);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(facts(b"\x30\x05abc"), None);
        assert_eq!(facts(b""), None);
    }
}
