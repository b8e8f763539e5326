// slimctl's commands. Each takes the parsed flags (positional 0 is the command, 1.. its
// arguments), talks to slimd, prints for people or as JSON/YAML, and returns an exit status
// (client/cli_support.h). Usage text for each is in kCommandHelp.
#pragma once

#include <map>
#include <string>

#include "base/flags.h"

namespace slim::client {

// Command name → its --help text (usage, flags, examples).
extern const std::map<std::string, std::string> kCommandHelp;
extern const char kMainHelp[];

// Runs the command named by positional 0. Throws EngineError(kInvalidArgument) for bad flags.
int RunCommand(const tools::Flags& flags);

// Boolean flags (they never take the next argument as a value), and one-letter aliases
// (-h for --help, -o for --output).
const std::set<std::string>& BooleanFlags();
const std::map<char, std::string>& ShortFlags();

// "slimctl 0.5.0 (API slim.v1)", for --version.
std::string VersionLine();

}  // namespace slim::client
