#include "client/spec_file.h"

#include <filesystem>

#include "base/errors.h"
#include "base/json.h"
#include "base/yaml.h"
#include "google/protobuf/util/json_util.h"

namespace slim::client {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void Bad(const std::string& message) { throw EngineError(ErrorCode::kInvalidArgument, message); }

// Sets `dotted` ("training.steps") in `doc` to `value`, creating mappings on the way.
void SetPath(Json* doc, const std::string& dotted, const Json& value) {
  Json* node = doc;
  size_t start = 0;
  while (true) {
    const size_t dot = dotted.find('.', start);
    const std::string key = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (key.empty()) Bad("--set: malformed field path '" + dotted + "'");
    if (node->kind == Json::kNull) node->kind = Json::kObject;
    if (node->kind != Json::kObject) Bad("--set: '" + dotted + "' goes through a field that is not a mapping");
    node = &node->members[key];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  *node = value;
}

// Data entries → {dataset, format, text_field}, uploading local files.
Json ResolveSources(const Json& sources, const std::string& field, const std::string& default_format,
                    const std::string& base_dir, const LocalDataUploader& upload) {
  Json list;
  list.kind = Json::kArray;
  const std::vector<Json> items = sources.kind == Json::kArray ? sources.items : std::vector<Json>{sources};
  for (size_t i = 0; i < items.size(); ++i) {
    const Json& item = items[i];
    const std::string where = "data." + field + "[" + std::to_string(i) + "]";
    Json out;
    out.kind = Json::kObject;
    std::string file, format = default_format;
    if (item.kind == Json::kString) {
      if (LooksLikeDatasetId(item.text)) {
        out.members["dataset"] = item;
      } else {
        file = item.text;
      }
    } else if (item.kind == Json::kObject) {
      for (const auto& [key, value] : item.members) {
        if (value.kind != Json::kString) Bad(where + "." + key + ": must be a string");
        if (key == "file") file = value.text;
        else if (key == "format") format = value.text;
        else if (key == "dataset" || key == "text_field") out.members[key] = value;
        else Bad(where + "." + key + ": unknown field (known: dataset, file, format, text_field)");
      }
    } else {
      Bad(where + ": must be a dataset id, a file path or a mapping");
    }
    if (!file.empty()) {
      if (out.members.count("dataset")) Bad(where + ": give either 'dataset' or 'file'");
      const std::string path = fs::path(file).is_absolute() || base_dir.empty() ? file : base_dir + "/" + file;
      Json id;
      id.kind = Json::kString;
      id.text = upload(path, format.empty() ? "text" : format);
      out.members["dataset"] = id;
    } else if (!out.members.count("dataset")) {
      Bad(where + ": needs 'dataset' or 'file'");
    }
    if (!format.empty()) {
      Json f;
      f.kind = Json::kString;
      f.text = format;
      out.members["format"] = f;
    }
    list.items.push_back(out);
  }
  return list;
}

}  // namespace

bool LooksLikeDatasetId(const std::string& text) {
  if (text.rfind("ds-", 0) != 0 || text.size() < 4) return false;
  return text.find_first_not_of("0123456789", 3) == std::string::npos;
}

v1::JobSpec LoadJobSpec(const std::string& path, const std::vector<std::string>& overrides,
                        const LocalDataUploader& upload) {
  Json doc;
  try {
    doc = ParseStructuredFile(path);
  } catch (const std::runtime_error& e) {
    Bad(std::string("spec ") + e.what());
  }
  if (doc.kind == Json::kNull) doc.kind = Json::kObject;
  if (doc.kind != Json::kObject) Bad("spec " + path + ": must be a mapping");
  for (const std::string& assignment : overrides) {
    const size_t eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) Bad("--set: expected FIELD=VALUE, got '" + assignment + "'");
    Json value;
    try {
      value = ParseYaml(assignment.substr(eq + 1));
    } catch (const std::runtime_error& e) {
      Bad("--set " + assignment + ": " + e.what());
    }
    SetPath(&doc, assignment.substr(0, eq), value);
  }

  const std::string base_dir = fs::path(path).parent_path().string();
  if (doc.members.count("data") && doc.members["data"].kind == Json::kObject) {
    Json& data = doc.members["data"];
    std::string default_format;
    if (data.members.count("format")) {
      default_format = data.members["format"].text;
      data.members.erase("format");
    }
    for (const char* field : {"train", "validation"}) {
      if (data.members.count(field)) {
        data.members[field] = ResolveSources(data.members[field], field, default_format, base_dir, upload);
      }
    }
  }
  if (doc.members.count("memory") && doc.members["memory"].kind == Json::kObject) {
    Json& memory = doc.members["memory"];
    if (memory.members.count("quota") && memory.members["quota"].kind == Json::kNumber) {
      const std::string bytes = SerializeJson(memory.members["quota"]);
      memory.members["quota"].kind = Json::kString;
      memory.members["quota"].text = bytes;
    }
    if (memory.members.count("chunk_size") && memory.members["chunk_size"].kind == Json::kString &&
        memory.members["chunk_size"].text == "auto") {
      memory.members.erase("chunk_size");
    }
    if (memory.members.count("device")) {  // slim-train's name for the device; here a kind
      memory.members["device_kind"] = memory.members["device"];
      memory.members.erase("device");
    }
  }

  v1::JobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(SerializeJson(doc), &spec, options);
  if (!status.ok()) Bad("spec " + path + ": " + std::string(status.message()));
  return spec;
}

}  // namespace slim::client
