//! `sessionql bench channel-type`: `channel_type` over synthetic rows that
//! cover every rule family, against the same query without it.

use std::time::{Duration, Instant};

use sessionql_udfs::SessionqlConfig;

use crate::bench::{median, peak_memory_mib};
use crate::engine::{run_statements, session_context};
use crate::error::Result;

/// Synthetic channel inputs: sources, mediums, campaigns, referrers and
/// click ids in proportions that exercise each rule step.
fn channel_inputs_sql(rows: u64) -> String {
    format!(
        "SELECT
           CASE value % 8 WHEN 0 THEN 'google' WHEN 1 THEN 'facebook' WHEN 2 THEN NULL
             WHEN 3 THEN 'newsletter' WHEN 4 THEN 'Partner-A' WHEN 5 THEN '' ELSE 'bing' END AS source,
           CASE value % 5 WHEN 0 THEN 'cpc' WHEN 1 THEN 'email' WHEN 2 THEN NULL
             WHEN 3 THEN 'social' ELSE 'null' END AS medium,
           CASE value % 11 WHEN 0 THEN 'spring-shopping' WHEN 1 THEN 'video-launch' END AS campaign,
           CASE value % 6 WHEN 0 THEN '$direct' WHEN 1 THEN 'www.google.co.uk' WHEN 2 THEN 'l.facebook.com'
             WHEN 3 THEN 'blog.example.dev' WHEN 4 THEN NULL ELSE 'news.ycombinator.com' END AS referrer,
           CASE WHEN value % 13 = 0 THEN 'Cj0KCQ' END AS gclid,
           CASE WHEN value % 17 = 0 THEN 'IwAR' END AS fbclid,
           CASE WHEN value % 19 = 0 THEN '1' END AS gad
         FROM generate_series(1, {rows})"
    )
}

async fn time_query(sql: &str, runs: usize) -> Result<Duration> {
    let context = session_context(&SessionqlConfig::default(), None)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        run_statements(&context, sql).await?;
        times.push(started.elapsed());
    }
    Ok(median(times))
}

/// Times `channel_type` over `rows` rows, `runs` times each, and prints the
/// medians, the function's own rows per second and peak memory.
pub async fn bench_channel_type(rows: u64, runs: usize) -> Result<()> {
    let inputs = channel_inputs_sql(rows);
    let baseline = format!(
        "SELECT sum(length(source) + length(medium) + length(campaign) + length(referrer) \
         + length(gclid) + length(fbclid) + length(gad)) FROM ({inputs})"
    );
    let with_channel = format!(
        "SELECT sum(length(source) + length(medium) + length(campaign) + length(referrer) \
         + length(gclid) + length(fbclid) + length(gad) \
         + length(channel_type(source, medium, campaign, referrer, gclid, fbclid, gad))) FROM ({inputs})"
    );
    let baseline_time = time_query(&baseline, runs).await?;
    let channel_time = time_query(&with_channel, runs).await?;
    let own_time = channel_time.saturating_sub(baseline_time);
    let rows_per_second = rows as f64 / own_time.as_secs_f64().max(f64::EPSILON);
    println!("channel_type over {rows} rows ({runs} runs each, median)");
    println!(
        "  inputs only          {:>9.3} s",
        baseline_time.as_secs_f64()
    );
    println!(
        "  with channel_type    {:>9.3} s",
        channel_time.as_secs_f64()
    );
    println!(
        "  channel_type itself  {:>9.3} s   {rows_per_second:.0} rows/s",
        own_time.as_secs_f64()
    );
    match peak_memory_mib() {
        Some(mib) => println!("  peak memory          {mib:>9.1} MiB"),
        None => println!("  peak memory          unknown (no /proc/self/status)"),
    }
    Ok(())
}
