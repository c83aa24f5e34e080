//! The table `rewarddance rank` prints for people: one line per candidate, best first, with
//! its file name; failed candidates last, with their reason.

use std::path::PathBuf;

use serde_json::Value;

/// Short names of the candidate files: the file name, or the path as given when two
/// candidates share a file name.
pub fn names(paths: &[PathBuf]) -> Vec<String> {
    let short: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let unique = short.iter().collect::<std::collections::HashSet<_>>().len() == short.len();
    if unique {
        short
    } else {
        paths.iter().map(|p| p.display().to_string()).collect()
    }
}

/// Renders the result object of `rank` (the `--json` output) as a table.
pub fn render(out: &Value, names: &[String]) -> String {
    let pairwise = out["method"] == "pairwise";
    let candidates = out["candidates"].as_array().map_or(&[][..], Vec::as_slice);
    let order: Vec<usize> = out["order"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64().map(|v| v as usize))
        .collect();
    let mut text = if pairwise {
        format!(
            "pairwise ranking of {} candidates ({} comparisons, model {})\n",
            candidates.len(),
            out["comparisons"],
            out["model"].as_str().unwrap_or("?")
        )
    } else {
        format!(
            "pointwise ranking of {} candidates (model {})\n",
            candidates.len(),
            out["model"].as_str().unwrap_or("?")
        )
    };
    let score_header = if pairwise {
        "wins  strength"
    } else {
        "   p_yes"
    };
    text += &format!("rank    #  {score_header}  file\n");
    let mut rank = 0;
    for &c in &order {
        let (Some(cand), Some(name)) = (candidates.get(c), names.get(c)) else {
            continue;
        };
        let failed = !cand["error"].is_null();
        let place = if failed {
            "-".to_string()
        } else {
            rank += 1;
            rank.to_string()
        };
        let score = match (failed, pairwise) {
            (true, true) => format!("{:>4}  {:>8}", "-", "-"),
            (true, false) => format!("{:>8}", "-"),
            (false, true) => format!(
                "{:>4.1}  {:>8}",
                cand["wins"].as_f64().unwrap_or(0.0),
                cand["strength"]
                    .as_f64()
                    .map_or("-".to_string(), |s| format!("{s:+.3}"))
            ),
            (false, false) => cand["p_yes"]
                .as_f64()
                .map_or(format!("{:>8}", "-"), |p| format!("{p:>8.4}")),
        };
        let note = match cand["reason"].as_str() {
            Some(reason) if failed => format!("  (failed: {reason})"),
            _ => String::new(),
        };
        text += &format!("{place:>4} {c:>4}  {score}  {name}{note}\n");
    }
    match out["best"].as_u64().map(|b| b as usize) {
        Some(b) => {
            let name = names.get(b).map_or("?", String::as_str);
            text += &format!("best: #{b} {name}\n");
        }
        None => text += "best: none (no candidate could be ranked)\n",
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pairwise_table_lists_best_first_and_failures_last() {
        let out = serde_json::json!({
            "model": "m", "method": "pairwise", "comparisons": 2, "order": [2, 0, 1], "best": 2,
            "candidates": [
                {"index": 0, "wins": 0.0, "strength": -0.25, "error": null},
                {"index": 1, "error": "reading b.png: not found", "reason": "unreadable_file"},
                {"index": 2, "wins": 1.0, "strength": 0.25, "error": null},
            ],
        });
        let names = names(&["x/a.png".into(), "x/b.png".into(), "y/c.png".into()]);
        assert_eq!(
            render(&out, &names),
            "pairwise ranking of 3 candidates (2 comparisons, model m)\n\
             rank    #  wins  strength  file\n   \
                1    2   1.0    +0.250  c.png\n   \
                2    0   0.0    -0.250  a.png\n   \
                -    1     -         -  b.png  (failed: unreadable_file)\n\
             best: #2 c.png\n"
        );
    }

    #[test]
    fn shared_file_names_fall_back_to_the_paths() {
        let paths: Vec<PathBuf> = vec!["a/x.png".into(), "b/x.png".into()];
        assert_eq!(names(&paths), ["a/x.png", "b/x.png"]);
    }
}
