// slimctl: the command-line client of slimd. Parses flags and runs one command
// (client/commands.h); errors are one line on stderr with an exit status per error class.
#include <iostream>

#include "client/cli_support.h"
#include "client/commands.h"
#include "base/errors.h"

int main(int argc, char** argv) {
  try {
    const slim::tools::Flags flags(argc, argv, slim::client::BooleanFlags(), slim::client::ShortFlags());
    if (flags.positional_count() == 0 && flags.Has("version")) {
      std::cout << slim::client::VersionLine() << "\n";
      return slim::client::kExitOk;
    }
    if (flags.positional_count() == 0) {
      std::cout << slim::client::kMainHelp;
      return flags.Bool("help") ? slim::client::kExitOk : slim::client::kExitUsage;
    }
    return slim::client::RunCommand(flags);
  } catch (const slim::EngineError& e) {
    std::cerr << "slimctl: " << e.what() << "\n";
    return e.code() == slim::ErrorCode::kInvalidArgument ? slim::client::kExitUsage : slim::client::kExitError;
  }
}
