#include "server/metrics/web_config.h"

#include <crypt.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace slim::server {
namespace {

namespace fs = std::filesystem;

std::string Bcrypt(const std::string& password) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  EXPECT_NE(crypt_gensalt_rn("$2y$", 4, nullptr, 0, salt, sizeof(salt)), nullptr);
  crypt_data scratch{};
  return crypt_rn(password.c_str(), salt, &scratch, sizeof(scratch));
}

class WebConfigTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& text) {
    const std::string path = dir_ + "/web.yml";
    std::ofstream(path) << text;
    return path;
  }
  void SetUp() override {
    dir_ = testing::TempDir() + "/web_config_test";
    fs::create_directories(dir_);
  }
  std::string dir_;
};

TEST_F(WebConfigTest, EmptyFileMeansPlainHttpWithoutUsers) {
  absl::StatusOr<WebConfig> config = ReadWebConfig(Write("# nothing configured\n{}\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->cert_chain_pem.empty());
  EXPECT_TRUE(config->basic_auth_users.empty());
}

TEST_F(WebConfigTest, UsersAreReadAndBadHashesNamed) {
  const std::string hash = Bcrypt("pw");
  absl::StatusOr<WebConfig> config = ReadWebConfig(Write("basic_auth_users:\n  prom: '" + hash + "'\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->basic_auth_users.at("prom"), hash);

  absl::StatusOr<WebConfig> plain = ReadWebConfig(Write("basic_auth_users:\n  prom: pw\n"));
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(plain.status().message().find("basic_auth_users.prom must be a bcrypt hash"), std::string::npos)
      << plain.status();
  absl::StatusOr<WebConfig> colon = ReadWebConfig(Write("basic_auth_users:\n  'a:b': '" + hash + "'\n"));
  EXPECT_NE(colon.status().message().find("'a:b'"), std::string::npos) << colon.status();
}

TEST_F(WebConfigTest, SettingsSlimdDoesNotImplementAreRefusedByName) {
  absl::StatusOr<WebConfig> config = ReadWebConfig(Write("http_server_config:\n  http2: true\n"));
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("http_server_config is not a setting slimd implements"), std::string::npos)
      << config.status();
  config = ReadWebConfig(Write("tls_server_config:\n  cert_file: a\n"));
  EXPECT_NE(config.status().message().find("tls_server_config.key_file must be a non-empty string"), std::string::npos)
      << config.status();
  config = ReadWebConfig(dir_ + "/missing.yml");
  EXPECT_NE(config.status().message().find("missing.yml"), std::string::npos) << config.status();
}

TEST(BasicAuthUsersTest, ChecksPasswordsAndRemembersAnswersWithoutMixingThemUp) {
  BasicAuthUsers users({{"prom", Bcrypt("right")}, {"other", Bcrypt("else")}});
  ASSERT_TRUE(users.enabled());
  for (int i = 0; i < 2; ++i) {  // the second round is answered from what was remembered
    EXPECT_TRUE(users.Check("prom", "right"));
    EXPECT_FALSE(users.Check("prom", "wrong"));
    EXPECT_FALSE(users.Check("other", "right"));
    EXPECT_TRUE(users.Check("other", "else"));
    EXPECT_FALSE(users.Check("nobody", "right"));
    EXPECT_FALSE(users.Check("prom", std::string("right\0x", 7)));  // crypt(3) would stop at the NUL
  }
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(users.Check("prom", "guess" + std::to_string(i)));  // past the memory
  EXPECT_TRUE(users.Check("prom", "right"));
  EXPECT_FALSE(BasicAuthUsers({}).enabled());
}

}  // namespace
}  // namespace slim::server
