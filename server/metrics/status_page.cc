#include "server/metrics/status_page.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>

#include "base/byte_size.h"

namespace slim::server {
namespace {

std::string Html(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string Percent(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f%%", 100.0 * std::clamp(x, 0.0, 1.0));
  return buf;
}

std::string State(v1::JobState s) { return v1::JobState_Name(s).substr(std::strlen("JOB_STATE_")); }

constexpr const char* kColors[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"};

}  // namespace

std::string RenderStatusPage(const v1::ListDevicesResponse& devices, const std::vector<v1::Job>& jobs) {
  std::map<std::string, const v1::Job*> by_id;
  for (const v1::Job& j : jobs) by_id[j.id()] = &j;
  std::string h = R"(<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>slimd status</title><style>
body{font-family:sans-serif;margin:2em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
.bar{position:relative;height:26px;background:#eee;border:1px solid #999;width:640px;margin:4px 0}
.seg{position:absolute;top:0;height:26px;color:#fff;font-size:11px;overflow:hidden;white-space:nowrap;line-height:26px;padding-left:3px;box-sizing:border-box;border-right:1px solid #fff}
.peak{position:absolute;top:-3px;height:32px;width:2px;background:#000}
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #ddd;white-space:nowrap}
.prog{width:160px;height:10px;background:#eee;display:inline-block}.prog div{height:10px;background:#59a14f}
</style></head><body><h1>slimd status</h1>
)";
  h += "<h2>Devices</h2>\n";
  for (const v1::Device& d : devices.devices()) {
    const double capacity = static_cast<double>(std::max<int64_t>(1, d.capacity_bytes()));
    h += "<div class=\"device\" id=\"device-" + Html(d.name()) + "\"><b>" + Html(d.name()) + "</b> (" + Html(d.kind()) +
         "): " + FormatBytes(d.committed_bytes()) + " of " + FormatBytes(d.capacity_bytes()) + " committed, " +
         std::to_string(d.job_ids_size()) + " job(s), observed peaks " + FormatBytes(d.observed_bytes()) +
         (d.worker_footprint_bytes() > 0 ? ", worker footprint " + FormatBytes(d.worker_footprint_bytes()) + " per process"
                                         : std::string()) +
         "\n<div class=\"bar\">";
    const double footprint = static_cast<double>(d.worker_footprint_bytes()) / capacity;
    double offset = 0;
    for (int i = 0; i < d.job_ids_size(); ++i) {
      const auto it = by_id.find(d.job_ids(i));
      if (it == by_id.end()) continue;
      const v1::Job& j = *it->second;
      const double width = static_cast<double>(j.quota_bytes()) / capacity;
      h += "<div class=\"seg\" title=\"" + Html(j.id()) + ": quota " + FormatBytes(j.quota_bytes()) + ", chunk " +
           std::to_string(j.chunk_size()) + "\" style=\"left:" + Percent(offset) + ";width:" + Percent(width) +
           ";background:" + kColors[i % 8] + "\">" + Html(j.id()) + "</div>";
      h += "<div class=\"peak\" title=\"observed peak of " + Html(j.id()) + "\" style=\"left:" +
           Percent(offset + static_cast<double>(j.observed_peak_bytes()) / capacity) + "\"></div>";
      offset += width;
      if (footprint > 0) {  // the worker process's own memory, committed beside its quota
        h += "<div class=\"seg\" title=\"" + Html(j.id()) + ": worker footprint " +
             FormatBytes(d.worker_footprint_bytes()) + "\" style=\"left:" + Percent(offset) + ";width:" +
             Percent(footprint) + ";background:#9a9a9a\"></div>";
        offset += footprint;
      }
    }
    h += "</div></div>\n";
  }
  h += "<h2>Jobs</h2>\n<table id=\"jobs\"><tr><th>job</th><th>state</th><th>device</th><th>quota</th>"
       "<th>chunk</th><th>peak (predicted / observed)</th><th>progress</th><th>loss</th><th>tokens/s</th></tr>\n";
  for (const v1::Job& j : jobs) {
    const v1::JobProgress& p = j.progress();
    std::string devices = j.device();  // every rank's for a data-parallel job
    if (j.devices_size() > 1) {
      devices.clear();
      for (const std::string& d : j.devices()) devices += (devices.empty() ? "" : ", ") + d;
    }
    const double done = p.total_steps() > 0 ? static_cast<double>(p.step()) / static_cast<double>(p.total_steps()) : 0;
    char loss[32], tps[32];
    std::snprintf(loss, sizeof(loss), "%.4f", p.loss());
    std::snprintf(tps, sizeof(tps), "%.0f", p.tokens_per_second());
    // No display name: the page is served without a token and shows no tenant data
    // (docs/security.md).
    h += "<tr class=\"job\"><td>" + Html(j.id()) + "</td><td>" + State(j.state()) +
         (j.queue_position() > 0 ? " #" + std::to_string(j.queue_position()) : "") + "</td><td>" + Html(devices) +
         "</td><td>" + FormatBytes(j.quota_bytes()) + "</td><td>" + std::to_string(j.chunk_size()) + " " + Html(j.mode()) +
         "</td><td>" + FormatBytes(j.predicted_peak_bytes()) + " / " + FormatBytes(j.observed_peak_bytes()) +
         "</td><td><span class=\"prog\"><div style=\"width:" + Percent(done) + "\"></div></span> " +
         std::to_string(p.step()) + "/" + std::to_string(p.total_steps()) + "</td><td>" + (p.loss() > 0 ? loss : "-") +
         "</td><td>" + (p.tokens_per_second() > 0 ? tps : "-") + "</td></tr>\n";
  }
  h += "</table>\n<p><a href=\"/metrics\">/metrics</a></p></body></html>\n";
  return h;
}

}  // namespace slim::server
