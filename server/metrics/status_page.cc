#include "server/metrics/status_page.h"

#include <absl/status/status.h>
#include <absl/strings/ascii.h>

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

// A job's colour: background and the text colour readable on it. No grey (the worker
// footprint's) and no near-white (free space).
struct Color {
  const char* background;
  const char* text;
};
constexpr Color kColors[] = {{"#4e79a7", "#fff"}, {"#f28e2b", "#000"}, {"#e15759", "#fff"}, {"#76b7b2", "#000"},
                             {"#59a14f", "#fff"}, {"#edc948", "#000"}, {"#b07aa1", "#fff"}, {"#ff9da7", "#000"},
                             {"#9c755f", "#fff"}, {"#2f4b7c", "#fff"}};
constexpr size_t kNumColors = sizeof(kColors) / sizeof(kColors[0]);
constexpr const char* kFootprintColor = "#9a9a9a";

// Depends on the id alone, so a job keeps its colour however the list around it changes. Ids
// ending in a number ("job-000042") take it modulo the palette, so that consecutive jobs (the
// ones likely to share a device) never share a colour; other ids hash (FNV-1a).
const Color& JobColor(const std::string& id) {
  size_t digits = 0;
  while (digits < id.size() && digits < 18 && id[id.size() - 1 - digits] >= '0' && id[id.size() - 1 - digits] <= '9') {
    ++digits;
  }
  uint64_t n = 0;
  if (digits > 0) {
    n = std::stoull(id.substr(id.size() - digits));
  } else {
    n = 14695981039346656037ull;
    for (unsigned char c : id) n = (n ^ c) * 1099511628211ull;
  }
  return kColors[n % kNumColors];
}

// At most `max_bytes` of `text`, cut at a UTF-8 character boundary, "…" marking a cut.
std::string Truncate(const std::string& text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t end = max_bytes;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return text.substr(0, end) + "…";
}

// The smallest power of two times 1 MiB that is at least `bytes`: a round scale for a zoomed bar.
int64_t RoundScale(int64_t bytes) {
  int64_t scale = int64_t{1} << 20;
  while (scale < bytes) scale *= 2;
  return scale;
}

// One memory bar of `device` showing bytes [0, scale): each job's quota as a segment in its
// colour, its observed peak as a tick, the worker footprint after it in grey.
std::string Bar(const v1::Device& d, const std::map<std::string, const v1::Job*>& by_id, int64_t scale_bytes,
                const std::string& css_class) {
  const double scale = static_cast<double>(std::max<int64_t>(1, scale_bytes));
  const double footprint = static_cast<double>(d.worker_footprint_bytes()) / scale;
  std::string h = "<div class=\"" + css_class + "\">";
  double offset = 0;
  for (const std::string& id : d.job_ids()) {
    const auto it = by_id.find(id);
    if (it == by_id.end()) continue;
    const v1::Job& j = *it->second;
    const Color& color = JobColor(j.id());
    const double width = static_cast<double>(j.quota_bytes()) / scale;
    // Clamped to the bar's end, should the quotas ever add up to more than the bar shows.
    h += "<div class=\"seg\" data-job=\"" + Html(j.id()) + "\" title=\"" + Html(j.id()) + ": quota " +
         FormatBytes(j.quota_bytes()) + ", observed peak " + FormatBytes(j.observed_peak_bytes()) + ", chunk " +
         std::to_string(j.chunk_size()) + "\" style=\"left:" + Percent(offset) +
         ";width:" + Percent(std::min(width, 1.0 - std::min(offset, 1.0))) + ";background:" + color.background +
         ";color:" + color.text + "\">" + Html(j.id()) + "</div>";
    if (j.observed_peak_bytes() > 0) {  // none before the worker's first report
      h += "<div class=\"peak\" title=\"observed peak of " + Html(j.id()) + ": " +
           FormatBytes(j.observed_peak_bytes()) + "\" style=\"left:" +
           Percent(std::min(offset + static_cast<double>(j.observed_peak_bytes()) / scale, 0.997)) + "\"></div>";
    }
    offset += width;
    if (footprint > 0) {  // the worker process's own memory, committed beside its quota
      h += "<div class=\"seg\" title=\"" + Html(j.id()) + ": worker footprint " +
           FormatBytes(d.worker_footprint_bytes()) + "\" style=\"left:" + Percent(offset) + ";width:" +
           Percent(std::min(footprint, 1.0 - std::min(offset, 1.0))) + ";background:" + kFootprintColor +
           "\"></div>";
      offset += footprint;
    }
  }
  return h + "</div>";
}

// The bytes a device's bars must show: everything committed, and every peak tick.
int64_t Extent(const v1::Device& d, const std::map<std::string, const v1::Job*>& by_id) {
  int64_t offset = 0, extent = d.committed_bytes();
  for (const std::string& id : d.job_ids()) {
    const auto it = by_id.find(id);
    if (it == by_id.end()) continue;
    extent = std::max(extent, offset + it->second->observed_peak_bytes());
    offset += it->second->quota_bytes() + d.worker_footprint_bytes();
  }
  return std::max(extent, offset);
}

std::string Device(const v1::Device& d, const std::map<std::string, const v1::Job*>& by_id) {
  std::string reservations;
  for (const std::string& r : d.reservations()) reservations += (reservations.empty() ? "" : ", ") + Html(r);
  // Every replica of a fleet names its devices alike: the element id names the replica too.
  const std::string id = d.replica().empty() ? d.name() : d.replica() + "/" + d.name();
  std::string h = "<div class=\"device\" id=\"device-" + Html(id) + "\"><b>" + Html(d.name()) + "</b> (" +
                  Html(d.kind()) + "): " + FormatBytes(d.committed_bytes()) + " of " + FormatBytes(d.capacity_bytes()) +
                  " committed, " + std::to_string(d.job_ids_size()) + " job(s), observed peaks " +
                  FormatBytes(d.observed_bytes()) +
                  (d.worker_footprint_bytes() > 0
                       ? ", worker footprint " + FormatBytes(d.worker_footprint_bytes()) + " per process"
                       : std::string()) +
                  (d.process_bytes() > 0 ? ", worker processes use " + FormatBytes(d.process_bytes()) +
                                               (d.kind() == "cuda" ? " (NVML)" : " (resident)")
                                         : std::string()) +
                  (reservations.empty() ? std::string() : ", reserved: " + reservations) + "\n";
  h += "<div class=\"scale\"><span>0</span><span>" + FormatBytes(d.capacity_bytes()) + "</span></div>" +
       Bar(d, by_id, d.capacity_bytes(), "bar") + "\n";
  // On a large device (by default half the machine's RAM) small jobs are a sliver of the bar:
  // then a second bar shows the first bytes only, at a power-of-two scale of at least 4x that
  // the committed part fills half or more of.
  const int64_t extent = Extent(d, by_id);
  if (extent > 0) {
    const int64_t scale = RoundScale(extent);
    if (scale <= d.capacity_bytes() / 4) {
      char zoom[32];
      std::snprintf(zoom, sizeof(zoom), "%.0f",
                    static_cast<double>(d.capacity_bytes()) / static_cast<double>(scale));
      h += "<div class=\"scale zoomed\"><span>0</span><span>zoomed &times;" + std::string(zoom) + ": the first " +
           FormatBytes(scale) + " of " + FormatBytes(d.capacity_bytes()) + "</span><span>" + FormatBytes(scale) +
           "</span></div>" + Bar(d, by_id, scale, "bar zoom") + "\n";
    }
  }
  return h + "</div>\n";
}

constexpr const char* kLegend = R"(<div class="legend">
<span><span class="sw" style="background:#4e79a7"></span>a job's quota (one colour per job, as in the job list)</span>
<span><span class="sw tick"></span>that job's observed peak</span>
<span><span class="sw" style="background:#9a9a9a"></span>worker footprint (per worker process, beside its quota)</span>
<span><span class="sw" style="background:#eee"></span>free</span>
</div>
<p class="note">Where a device's jobs fill only a small part of it, a second, dashed bar zooms in on its first bytes (4&times; or more); its scale is written above it.</p>
)";

// One replica's devices (a single slimd's: `replica` empty), under a heading in a fleet.
std::string Replica(const std::string& replica, const std::string& remark, const v1::ListDevicesResponse& devices,
                    const std::map<std::string, const v1::Job*>& by_id) {
  std::string h = "<div class=\"replica\" id=\"replica-" + Html(replica) + "\">\n";
  if (!replica.empty()) h += "<h3>Replica " + Html(replica) + remark + "</h3>\n";
  for (const v1::Device& d : devices.devices()) h += Device(d, by_id);
  return h + "</div>\n";
}

}  // namespace

std::string RenderStatusPage(const v1::ListDevicesResponse& devices,
                             const std::vector<v1::ListDevicesResponse>& fleet, const std::vector<v1::Job>& jobs,
                             const std::string& replica) {
  std::map<std::string, const v1::Job*> by_id;
  for (const v1::Job& j : jobs) by_id[j.id()] = &j;
  std::string h = R"(<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>slimd status</title><style>
body{font-family:sans-serif;margin:2em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}h3{font-size:1em;margin:1.2em 0 0 0}
.device{margin:14px 0}
.bar{position:relative;height:26px;background:#eee;border:1px solid #999;width:640px;margin:2px 0 4px 0}
.bar.zoom{border-style:dashed}
.scale{width:640px;display:flex;justify-content:space-between;font-size:11px;color:#555;margin-top:4px}
.seg{position:absolute;top:0;height:26px;font-size:11px;overflow:hidden;white-space:nowrap;line-height:26px;padding-left:3px;box-sizing:border-box;border-right:1px solid #fff}
.peak{position:absolute;top:-3px;height:32px;width:2px;background:#000}
.legend{font-size:13px;margin:6px 0}.legend>span{margin-right:18px;white-space:nowrap}
.sw{display:inline-block;width:14px;height:14px;vertical-align:middle;margin-right:5px;border:1px solid #999;box-sizing:border-box}
.sw.tick{width:3px;height:18px;background:#000;border:0;margin-left:5px;margin-right:8px}
.note{font-size:12px;color:#555;margin:4px 0}
table{border-collapse:collapse;font-size:14px}td,th{padding:3px 7px;text-align:left;border-bottom:1px solid #ddd;white-space:nowrap}
th{white-space:normal;vertical-align:bottom}tr.error td{white-space:normal;color:#a00;font-size:13px;max-width:900px;border-bottom:1px solid #ddd}
tr.failed td{border-bottom:0}
.prog{width:120px;height:10px;background:#eee;display:inline-block}.prog div{height:10px;background:#59a14f}
</style></head><body><h1>slimd status)";
  if (!replica.empty()) h += " &mdash; replica " + Html(replica);
  h += "</h1>\n";
  h += "<h2>Devices</h2>\n";
  if (!replica.empty()) {
    h += "<p class=\"note\">Every live replica's devices: this one's as they are now, the others' as they "
         "published them with their lease renewals (every quarter lease), so a few seconds old.</p>\n";
  }
  h += kLegend;
  h += Replica(replica, replica.empty() ? "" : " (this one)", devices, by_id);
  // The other live replicas, in id order. Their publications include this one's, older.
  int others = 0;
  for (const v1::ListDevicesResponse& published : fleet) {
    if (published.devices().empty()) continue;
    const std::string& other = published.devices(0).replica();
    if (other.empty() || other == replica) continue;
    h += Replica(other, "", published, by_id);
    ++others;
  }
  if (!replica.empty() && fleet.empty()) {
    // A live replica always finds its own publication: the store could not be read.
    h += "<p class=\"note\">The other replicas' devices could not be read from the store.</p>\n";
  } else if (!replica.empty() && others == 0) {
    h += "<p class=\"note\">No other replica is live.</p>\n";
  }

  bool in_fleet = !replica.empty();
  for (const v1::Job& j : jobs) in_fleet = in_fleet || !j.replica().empty();
  const int columns = in_fleet ? 10 : 9;
  h += "<h2>Jobs</h2>\n<table id=\"jobs\"><tr><th>job</th><th>state</th>" +
       std::string(in_fleet ? "<th>replica</th>" : "") +
       "<th>device</th><th>quota</th><th>chunk</th><th>peak (predicted / observed)</th><th>progress</th><th>loss</th>"
       "<th>tokens/s</th></tr>\n";
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
    const bool failed = j.state() == v1::JOB_STATE_FAILED && (!j.error().empty() || j.error_code() != 0);
    std::string replica_cell;
    if (in_fleet) {
      replica_cell = "<td>" + (j.replica().empty() ? std::string("-") : Html(j.replica())) +
                     (!replica.empty() && j.replica() == replica ? " (this one)" : "") + "</td>";
    }
    // No display name: the page is served without a token and shows no tenant data
    // (docs/security.md).
    h += "<tr class=\"job" + std::string(failed ? " failed" : "") + "\"><td><span class=\"sw\" data-job=\"" +
         Html(j.id()) + "\" style=\"background:" + JobColor(j.id()).background + "\"></span>" + Html(j.id()) +
         "</td><td>" + State(j.state()) + (j.queue_position() > 0 ? " #" + std::to_string(j.queue_position()) : "") +
         "</td>" + replica_cell + "<td>" + Html(devices) + "</td><td>" + FormatBytes(j.quota_bytes()) + "</td><td>" +
         std::to_string(j.chunk_size()) + " " + Html(j.mode()) + "</td><td>" + FormatBytes(j.predicted_peak_bytes()) +
         " / " + FormatBytes(j.observed_peak_bytes()) + "</td><td><span class=\"prog\"><div style=\"width:" +
         Percent(done) + "\"></div></span> " + std::to_string(p.step()) + "/" + std::to_string(p.total_steps()) +
         "</td><td>" + (p.loss() > 0 ? loss : "-") + "</td><td>" + (p.tokens_per_second() > 0 ? tps : "-") +
         "</td></tr>\n";
    if (failed) {
      // Job.error_code is a google.rpc.Code value, the same numbers as absl::StatusCode.
      const std::string code =
          j.error_code() != 0 ? absl::StatusCodeToString(static_cast<absl::StatusCode>(j.error_code())) : "";
      // Workers' errors begin with the code's name in lower case ("resource_exhausted: ..."):
      // the name is shown once.
      std::string message = j.error();
      if (!code.empty() && absl::AsciiStrToUpper(message.substr(0, code.size() + 2)) == code + ": ") {
        message = message.substr(code.size() + 2);
      }
      const std::string full = (code.empty() ? "" : code + ": ") + message;
      h += "<tr class=\"error\"><td></td><td colspan=\"" + std::to_string(columns - 1) + "\" title=\"" + Html(full) +
           "\">" + (code.empty() ? "" : "<b>" + Html(code) + "</b> ") + Html(Truncate(message, 200)) + "</td></tr>\n";
    }
  }
  h += "</table>\n<p><a href=\"/metrics\">/metrics</a></p></body></html>\n";
  return h;
}

}  // namespace slim::server
