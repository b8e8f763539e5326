// Who is calling: the tenant and role a bearer token is bound to (docs/security.md).
#pragma once

#include <string>

namespace slim::server {

struct Principal {
  enum class Role { kUser, kAdmin };
  std::string tenant;  // "" for the anonymous admin of a tokenless server
  Role role = Role::kUser;
  bool admin() const { return role == Role::kAdmin; }
  // A resource owned by `owner` is visible to its tenant and to admins; models with no owner
  // (imported by an admin) are shared with everyone (pass shared_if_unowned).
  bool Sees(const std::string& owner, bool shared_if_unowned = false) const {
    return admin() || owner == tenant || (shared_if_unowned && owner.empty());
  }
};

}  // namespace slim::server
