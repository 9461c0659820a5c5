// The bundle's manifest: the schema acl_bundle.sim.builder writes (acl_bundle/_manifest.py reads it).
#pragma once

#include <string>
#include <vector>

#include "options.h"
#include "variables.h"

namespace bundle_builder {

struct ManifestInfo {
  std::vector<std::string> graphs;  // in bundle_get_model_id order
  std::vector<DataInput> inputs;
  std::vector<Variable> variables;  // in update-graph input order
  std::string precision_mode;       // the mode built with (GE's default when none was given)
};

std::string ManifestJson(const ManifestInfo &info, const Options &options);
// Write atomically (temporary file in the same folder, then rename); throws std::runtime_error.
void WriteFileAtomic(const std::string &path, const std::string &text);

}  // namespace bundle_builder
