//! `sessionql generate`: a deterministic generator of realistic product events.
//!
//! The same seed gives the same files, byte for byte. What it models, so that
//! every session rule is exercised: heavy-tailed users (a few very active) and
//! session lengths (many one-event visits, a long tail); about a fifth of the
//! sessions without an SDK `session_id` (server-side events) so sessions must be
//! derived; idle gaps near the 30-minute boundary; a few sessions running past
//! 24 hours; web (`$pageview`) and mobile (`$screen`) traffic; marketing
//! sources covering the channel rules; a few duplicated events (same uuid); and
//! out-of-order arrival (files are in arrival order, not timestamp order).

pub mod parquet_files;
pub mod posthog_ndjson;

use std::path::PathBuf;

use chrono::{NaiveDate, TimeZone, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sessionql_udfs::session_uuid::uuid_text;
use sessionql_udfs::stable_hash::splitmix64;

use crate::error::{Result, SessionqlError};
use crate::event_rows::EventRow;
use parquet_files::ParquetFiles;
use posthog_ndjson::NdjsonFiles;

/// What the generator writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GeneratedFormat {
    /// The `events` schema as Parquet, ready to query.
    #[default]
    Parquet,
    /// PostHog-shaped JSON events, one per line, for `sessionql ingest`.
    Ndjson,
}

/// The generator's output files, of either format.
enum GeneratedFiles {
    Parquet(Box<ParquetFiles>),
    Ndjson(NdjsonFiles),
}

impl GeneratedFiles {
    fn push(&mut self, row: EventRow, arrival_us: i64) -> Result<()> {
        match self {
            GeneratedFiles::Parquet(files) => files.push(row),
            GeneratedFiles::Ndjson(files) => files.push(&row, arrival_us),
        }
    }

    fn close(self) -> Result<Vec<PathBuf>> {
        match self {
            GeneratedFiles::Parquet(files) => files.close(),
            GeneratedFiles::Ndjson(files) => files.close(),
        }
    }
}

/// Options of a generator run.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// How many events to write (duplicates included).
    pub events: u64,
    /// Output directory; created if missing.
    pub out: PathBuf,
    /// Seed of the pseudo-random sequence.
    pub seed: u64,
    /// First day of the generated period (UTC).
    pub start: NaiveDate,
    /// Length of the period in days.
    pub days: u32,
    /// Most events per output file.
    pub events_per_file: usize,
    /// Parquet or PostHog NDJSON.
    pub format: GeneratedFormat,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            events: 100_000,
            out: PathBuf::from("events"),
            seed: 42,
            start: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default(),
            days: 30,
            events_per_file: 1_000_000,
            format: GeneratedFormat::Parquet,
        }
    }
}

/// What a generator run wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    /// Events written.
    pub events: u64,
    /// Sessions started (given and to-be-derived).
    pub sessions: u64,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// SplitMix64: small, fast, and fully determined by its seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Picks by weight from `(weight, item)` pairs.
    fn weighted<'a, T>(&mut self, items: &'a [(u32, T)]) -> &'a T {
        let total: u64 = items.iter().map(|(weight, _)| u64::from(*weight)).sum();
        let mut target = self.below(total);
        for (weight, item) in items {
            if target < u64::from(*weight) {
                return item;
            }
            target -= u64::from(*weight);
        }
        &items[items.len() - 1].1
    }

    /// Exponentially distributed with the given mean.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// A UUIDv7 string for time `timestamp_us`.
    fn uuid_v7(&mut self, timestamp_us: i64) -> String {
        let millis = (timestamp_us.div_euclid(1000) as u128) & 0xffff_ffff_ffff;
        let random = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        let bits =
            (millis << 80) | (0x7 << 76) | (random & 0x0fff_3fff_ffff_ffff_ffff) | (0b10 << 62);
        uuid_text(bits)
    }
}

/// Where a session came from: what its first event carries.
#[derive(Debug, Clone, Copy)]
struct TrafficSource {
    referring_domain: &'static str,
    utm_source: Option<&'static str>,
    utm_medium: Option<&'static str>,
    utm_campaign: Option<&'static str>,
    gclid: bool,
    fbclid: bool,
    gad_source: Option<&'static str>,
}

const fn source(referring_domain: &'static str) -> TrafficSource {
    TrafficSource {
        referring_domain,
        utm_source: None,
        utm_medium: None,
        utm_campaign: None,
        gclid: false,
        fbclid: false,
        gad_source: None,
    }
}

const fn utm(
    referring_domain: &'static str,
    utm_source: &'static str,
    utm_medium: &'static str,
    utm_campaign: &'static str,
) -> TrafficSource {
    TrafficSource {
        referring_domain,
        utm_source: Some(utm_source),
        utm_medium: Some(utm_medium),
        utm_campaign: Some(utm_campaign),
        gclid: false,
        fbclid: false,
        gad_source: None,
    }
}

const TRAFFIC_SOURCES: [(u32, TrafficSource); 18] = [
    (380, source("$direct")),
    (170, source("www.google.com")),
    (20, source("www.google.co.uk")),
    (30, source("www.bing.com")),
    (15, source("duckduckgo.com")),
    (
        70,
        TrafficSource {
            gclid: true,
            gad_source: Some("1"),
            ..utm("www.google.com", "google", "cpc", "brand-search")
        },
    ),
    (
        10,
        TrafficSource {
            gclid: true,
            ..utm("www.google.com", "google", "cpc", "spring-shopping")
        },
    ),
    (50, source("l.facebook.com")),
    (
        30,
        TrafficSource {
            fbclid: true,
            ..utm("m.facebook.com", "facebook", "paid_social", "retarget-q1")
        },
    ),
    (30, source("t.co")),
    (
        20,
        utm("www.linkedin.com", "linkedin", "social", "launch-week"),
    ),
    (50, utm("$direct", "newsletter", "email", "weekly-digest")),
    (20, source("www.youtube.com")),
    (55, source("blog.example-partner.dev")),
    (
        10,
        utm("www.google.com", "google", "cpc", "pmax-cross-network"),
    ),
    (
        10,
        utm("partner-site.io", "partner-site", "affiliate", "spring"),
    ),
    (10, utm("$direct", "sms", "text", "black-friday")),
    (10, utm("$direct", "", "null", "")),
];

const WEB_PATHS: [&str; 14] = [
    "/",
    "/",
    "/pricing",
    "/docs",
    "/docs/getting-started",
    "/docs/sql",
    "/blog",
    "/blog/launch-week",
    "/signup",
    "/login",
    "/features",
    "/about",
    "/changelog",
    "/careers",
];
const APP_PATHS: [&str; 5] = [
    "/dashboard",
    "/insights/42",
    "/insights/7",
    "/settings",
    "/billing",
];
const SCREENS: [&str; 5] = ["Home", "Feed", "Search", "Profile", "Settings"];
const CUSTOM_EVENTS: [&str; 5] = [
    "signed_up",
    "added_to_cart",
    "purchase",
    "clicked_cta",
    "invited_teammate",
];
const BROWSERS: [(&str, &str); 5] = [
    ("Chrome", "Windows"),
    ("Chrome", "Mac OS X"),
    ("Safari", "Mac OS X"),
    ("Firefox", "Linux"),
    ("Edge", "Windows"),
];
const EXTERNAL_LINKS: [&str; 3] = [
    "https://github.com/sessionql/sessionql",
    "https://twitter.com/sessionql",
    "https://docs.rs/sessionql",
];

/// A user: their id and what kind of client they use.
struct User {
    distinct_id: String,
    mobile: bool,
    browser: (&'static str, &'static str),
}

fn make_user(seed: u64, index: u64) -> User {
    let mut rng = Rng(splitmix64(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d)));
    let distinct_id = if rng.chance(0.3) {
        format!("anon-{:016x}", rng.next_u64())
    } else {
        format!("user-{index:06}")
    };
    User {
        distinct_id,
        mobile: rng.chance(0.15),
        browser: *rng.pick(&BROWSERS),
    }
}

/// Writes the events; the files appear complete or not at all (each is
/// written under a hidden name and renamed when done).
pub fn generate(options: &GenerateOptions) -> Result<GenerateSummary> {
    std::fs::create_dir_all(&options.out).map_err(|source| SessionqlError::Write {
        path: options.out.clone(),
        source,
    })?;
    let days = options.days.max(1);
    let first_day = Utc.from_utc_datetime(&options.start.and_hms_opt(0, 0, 0).unwrap_or_default());
    let users = (options.events / 40).max(5);
    let mut rng = Rng(options.seed);
    let mut writer = match options.format {
        GeneratedFormat::Parquet => GeneratedFiles::Parquet(Box::new(ParquetFiles::new(
            &options.out,
            options.events_per_file,
        ))),
        GeneratedFormat::Ndjson => {
            GeneratedFiles::Ndjson(NdjsonFiles::new(&options.out, options.events_per_file))
        }
    };
    let progress = progress_bar(options.events);
    let mut summary = GenerateSummary::default();

    for day in 0..u64::from(days) {
        let day_budget =
            options.events * (day + 1) / u64::from(days) - options.events * day / u64::from(days);
        let day_start_us = first_day.timestamp_micros() + day as i64 * 86_400_000_000;
        let mut day_events: Vec<(i64, EventRow)> = Vec::new();
        while (day_events.len() as u64) < day_budget {
            // Heavy-tailed activity: low user indexes are far more active.
            let user_index = (rng.unit().powf(2.5) * users as f64) as u64;
            let user = make_user(options.seed, user_index);
            let start_us = day_start_us + (rng.unit() * 86_400_000_000.0) as i64;
            let remaining = (day_budget - day_events.len() as u64) as usize;
            summary.sessions += 1;
            for row in generate_session(&mut rng, &user, start_us, remaining) {
                // Most events arrive within seconds; some hours late.
                let delay_us = if rng.chance(0.05) {
                    (rng.unit() * 7_200_000_000.0) as i64
                } else {
                    (rng.unit() * 2_000_000.0) as i64
                };
                day_events.push((row.timestamp_us + delay_us, row));
            }
        }
        day_events.sort_by_key(|(arrival, _)| *arrival);
        for (arrival_us, row) in day_events {
            writer.push(row, arrival_us)?;
            summary.events += 1;
        }
        progress.set_position(summary.events);
    }
    summary.files = writer.close()?;
    progress.finish_and_clear();
    Ok(summary)
}

fn progress_bar(events: u64) -> ProgressBar {
    if events < 1_000_000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(events);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// The events of one session, at most `budget` of them (duplicates included).
fn generate_session(rng: &mut Rng, user: &User, start_us: i64, budget: usize) -> Vec<EventRow> {
    let traffic = *rng.weighted(&TRAFFIC_SOURCES);
    let server_side = rng.chance(0.2);
    let marathon = rng.chance(0.004);
    let no_pageviews = server_side && rng.chance(0.15);
    let length = if marathon {
        90 + rng.below(40) as usize
    } else if rng.chance(0.3) {
        1
    } else {
        // Pareto tail: most sessions a handful of events, a few hundreds.
        (2.0 + 1.5 / (1.0 - rng.unit()).powf(1.0 / 1.2)).min(300.0) as usize
    };
    let length = length.min(budget.max(1));
    let session_id = (!server_side).then(|| rng.uuid_v7(start_us));
    let app = !user.mobile && rng.chance(0.1);
    let host = if app {
        "app.example.com"
    } else {
        "www.example.com"
    };

    let mut rows = Vec::with_capacity(length);
    let mut timestamp_us = start_us;
    for position in 0..length {
        if position > 0 {
            let gap_seconds = if marathon {
                600.0 + rng.unit() * 900.0
            } else if rng.chance(0.03) {
                // Near the idle timeout, on both sides of it.
                1500.0 + rng.unit() * 600.0
            } else if rng.chance(0.1) {
                120.0 + rng.unit() * 480.0
            } else {
                rng.exponential(40.0)
            };
            timestamp_us += (gap_seconds * 1_000_000.0) as i64;
        }
        let event = if no_pageviews {
            *rng.pick(&["api_call", "invoice_paid", "subscription_renewed"])
        } else if position == 0 {
            if user.mobile { "$screen" } else { "$pageview" }
        } else {
            let custom_event = *rng.pick(&CUSTOM_EVENTS);
            *rng.weighted(&[
                (45, if user.mobile { "$screen" } else { "$pageview" }),
                (30, "$autocapture"),
                (8, "$pageleave"),
                (10, custom_event),
                (5, "$web_vitals"),
                (2, "$identify"),
            ])
        };
        let path = if app {
            *rng.pick(&APP_PATHS)
        } else {
            *rng.pick(&WEB_PATHS)
        };
        let entry = position == 0;
        let mut row = EventRow {
            required: [
                rng.uuid_v7(timestamp_us),
                event.to_string(),
                user.distinct_id.clone(),
            ],
            timestamp_us,
            optional: Default::default(),
        };
        let [
            session_column,
            current_url,
            pathname,
            host_column,
            referrer,
            referring_domain,
            utm_source,
            utm_medium,
            utm_campaign,
            utm_term,
            utm_content,
            gclid,
            gad_source,
            fbclid,
            external_click_url,
            properties,
        ] = &mut row.optional;
        *session_column = session_id.clone();
        let mut property_map = serde_json::Map::new();
        if user.mobile {
            property_map.insert("$os".into(), json!("iOS"));
            property_map.insert("$device_type".into(), json!("Mobile"));
            property_map.insert("$lib".into(), json!("posthog-ios"));
            if event == "$screen" {
                property_map.insert("$screen_name".into(), json!(rng.pick(&SCREENS)));
            }
        } else if !no_pageviews {
            let query = if entry && traffic.utm_source.is_some() {
                format!("?utm_source={}", traffic.utm_source.unwrap_or_default())
            } else {
                String::new()
            };
            let url = format!("https://{host}{path}{query}");
            property_map.insert("$browser".into(), json!(user.browser.0));
            property_map.insert("$os".into(), json!(user.browser.1));
            property_map.insert("$device_type".into(), json!("Desktop"));
            property_map.insert("$lib".into(), json!("web"));
            *current_url = Some(url);
            *pathname = Some(path.to_string());
            *host_column = Some(host.to_string());
            if entry {
                *referring_domain = Some(traffic.referring_domain.to_string());
                if traffic.referring_domain != "$direct" {
                    *referrer = Some(format!("https://{}/", traffic.referring_domain));
                }
            } else {
                *referring_domain = Some(host.to_string());
                *referrer = Some(format!("https://{host}/"));
            }
        } else {
            property_map.insert("$lib".into(), json!("posthog-node"));
        }
        if entry && !no_pageviews {
            *utm_source = traffic.utm_source.map(str::to_string);
            *utm_medium = traffic.utm_medium.map(str::to_string);
            *utm_campaign = traffic.utm_campaign.map(str::to_string);
            if traffic.utm_medium == Some("cpc") {
                *utm_term = Some("session analytics".into());
                *utm_content = Some("ad-variant-b".into());
            }
            *gclid = traffic
                .gclid
                .then(|| format!("Cj0KCQ{:012x}", rng.next_u64() >> 16));
            *fbclid = traffic
                .fbclid
                .then(|| format!("IwAR{:012x}", rng.next_u64() >> 16));
            *gad_source = traffic.gad_source.map(str::to_string);
        }
        if event == "$autocapture" && rng.chance(0.05) {
            *external_click_url = Some(rng.pick(&EXTERNAL_LINKS).to_string());
        }
        match event {
            "purchase" => {
                property_map.insert("revenue".into(), json!(rng.below(20_000) as f64 / 100.0));
            }
            "signed_up" => {
                property_map.insert("plan".into(), json!(rng.pick(&["free", "pro", "team"])));
            }
            _ => {}
        }
        if let Some(id) = &session_id {
            property_map.insert("$session_id".into(), json!(id));
        }
        *properties = Some(serde_json::Value::Object(property_map).to_string());
        let duplicated = rng.chance(0.003) && rows.len() + 2 <= length;
        if duplicated {
            rows.push(row.clone());
        }
        rows.push(row);
        if rows.len() >= length {
            break;
        }
    }
    rows
}
