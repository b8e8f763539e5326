#include "client/spec_file.h"

#include <cmath>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <utility>
#include <vector>

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
      for (auto& [key, value] : upload(path, format.empty() ? "text" : format).members) out.members[key] = value;
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

// Checks a spec document against the API's message types before protobuf's JSON parser reads
// it, naming a wrong field by its path as the engine's spec reader does ("spec:
// training.optimiser: unknown field (known here: ...)"), so that a mistake reads the same from
// slimctl as from slim-train (protobuf would answer "Cannot find field."). Only names and
// types are checked here; values are checked by the server, with the engine's reader.
void CheckFields(const Json& value, const google::protobuf::Descriptor& type, const std::string& path) {
  using google::protobuf::FieldDescriptor;
  const auto bad = [](const std::string& field, const std::string& what) { Bad("spec: " + field + ": " + what); };
  if (value.kind == Json::kNull) return;  // an empty section
  if (value.kind != Json::kObject) bad(path, "must be a mapping, got " + DescribeJson(value));
  for (const auto& [key, member] : value.members) {
    const std::string where = path.empty() ? key : path + "." + key;
    const FieldDescriptor* field = type.FindFieldByName(key);
    if (field == nullptr) {
      std::string known;
      for (int i = 0; i < type.field_count(); ++i) known += (i == 0 ? "" : ", ") + type.field(i)->name();
      bad(where, "unknown field (known here: " + known + ")");
    }
    if (member.kind == Json::kNull) continue;
    std::vector<std::pair<std::string, const Json*>> items;
    if (field->is_repeated()) {
      if (member.kind != Json::kArray) bad(where, "must be a list, got " + DescribeJson(member));
      for (size_t i = 0; i < member.items.size(); ++i) {
        items.emplace_back(where + "[" + std::to_string(i) + "]", &member.items[i]);
      }
    } else {
      items.emplace_back(where, &member);
    }
    for (const auto& [item_path, item] : items) {
      switch (field->cpp_type()) {
        case FieldDescriptor::CPPTYPE_MESSAGE:
          CheckFields(*item, *field->message_type(), item_path);
          break;
        case FieldDescriptor::CPPTYPE_STRING:
          if (item->kind != Json::kString) bad(item_path, "must be a string, got " + DescribeJson(*item));
          break;
        case FieldDescriptor::CPPTYPE_DOUBLE:
        case FieldDescriptor::CPPTYPE_FLOAT:
          if (item->kind != Json::kNumber) bad(item_path, "must be a number, got " + DescribeJson(*item));
          break;
        case FieldDescriptor::CPPTYPE_BOOL:
          if (item->kind != Json::kBool) bad(item_path, "must be true or false, got " + DescribeJson(*item));
          break;
        case FieldDescriptor::CPPTYPE_ENUM:
          if (item->kind != Json::kString) bad(item_path, "must be a name, got " + DescribeJson(*item));
          break;
        default: {  // integers; 32-bit fields must also fit
          const bool is_32 = field->cpp_type() == FieldDescriptor::CPPTYPE_INT32 ||
                             field->cpp_type() == FieldDescriptor::CPPTYPE_UINT32;
          const double limit = is_32 ? 2147483647.0 : 9e15;
          if (item->kind != Json::kNumber || item->number != std::floor(item->number) ||
              std::fabs(item->number) > limit) {
            bad(item_path, "must be an integer" + std::string(is_32 ? " below 2^31" : "") + ", got " +
                               DescribeJson(*item));
          }
        }
      }
    }
  }
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
    if (path == "-") {  // the spec on stdin, as YAML or JSON; its relative paths from here
      doc = ParseYaml(std::string(std::istreambuf_iterator<char>(std::cin), {}));
    } else {
      doc = ParseStructuredFile(path);
    }
  } catch (const std::runtime_error& e) {
    Bad(std::string("spec ") + (path == "-" ? "on stdin: " : "") + e.what());
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

  const std::string base_dir = path == "-" ? "" : fs::path(path).parent_path().string();
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

  CheckFields(doc, *v1::JobSpec::descriptor(), "");
  v1::JobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(SerializeJson(doc), &spec, options);
  if (!status.ok()) Bad("spec " + path + ": " + std::string(status.message()));
  return spec;
}

}  // namespace slim::client
