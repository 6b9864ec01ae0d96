//! `cutover nginx-config APP`: prints the nginx site config of an app for
//! the nginx front mode. Needs only the configuration file, not the daemon.

use crate::cli::GlobalArgs;
use crate::failure::{Failure, Outcome};
use cutover_config::Config;
use std::io::Write;
use std::path::Path;

pub fn print(global: &GlobalArgs, app: &str) -> Outcome {
    let config = Config::load(&global.config).map_err(|e| Failure::config(&e))?;
    let Some(nginx) = &config.proxy.nginx else {
        return Err(Failure::usage(format!(
            "{} does not use nginx: set `mode = \"nginx\"` in [proxy] (and [proxy.nginx], see the README's \"nginx front mode\") first",
            global.config.display()
        )));
    };
    let Some(app_config) = config.app(app) else {
        let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
        return Err(Failure::usage(format!(
            "there is no app `{app}` in {} (apps: {})",
            global.config.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    let include = nginx.include_path(app);
    // Does nginx.conf already include the upstream file (Debian's includes
    // /etc/nginx/conf.d/*.conf)? Read it when it is on this host; else
    // assume the Debian layout for conf.d.
    let guess = nginx.include_dir == Path::new("/etc/nginx/conf.d");
    let include_is_global = match &nginx.ssh {
        Some(_) => guess,
        None => std::fs::read_to_string(&nginx.conf)
            .map(|text| cutover_nginx::conf_includes(&text, &nginx.conf, &include))
            .unwrap_or(guess),
    };
    let site =
        cutover_nginx::site_config(nginx, app_config, config.proxy.max_body, include_is_global);
    let text = if global.json {
        let value = serde_json::json!({
            "app": app,
            "include": include.display().to_string(),
            "include_is_global": include_is_global,
            "site_config": site,
        });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
        )
    } else {
        site
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    Ok(())
}
