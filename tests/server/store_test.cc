// The Store contract, run against both backends (StoreTest/*: SqliteStore and PostgresStore):
// ids, job/event sequencing, pagination, datasets and models, argument errors, durability
// across reopening, concurrent updates through one and through two store objects (two
// replicas), schema versions. Then what only one backend has: SQLite's file handling,
// PostgreSQL's connection strings, NOTIFY, reconnection and UNAVAILABLE, and its replica
// methods (PostgresStoreReplicaTest: claims, leases, fencing, takeover, cancel requests, LISTEN,
// the schema upgrade).
//
// The PostgreSQL cases need a server (tests/server/postgres_test_database.h): ctest starts one;
// by hand, set SLIM_TEST_POSTGRES_URL or they skip. Each case creates and drops its own
// database.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <ostream>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "server/jobs/postgres_store.h"
#include "server/jobs/sqlite_store.h"
#include "tests/server/postgres_test_database.h"

namespace slim::server {
namespace {

using pgtest::PostgresServerUrl;
using pgtest::TestDatabase;
using pgtest::WithDatabase;
using v1::JobState;

enum class Backend { kSqlite, kPostgres };

void PrintTo(Backend backend, std::ostream* os) { *os << (backend == Backend::kSqlite ? "Sqlite" : "Postgres"); }

// A fresh directory per test under the GoogleTest temp dir.
std::string FreshDir() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = absl::StrCat("store_test_", info->test_suite_name(), "_", info->name());
  absl::StrReplaceAll({{"/", "_"}}, &name);
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// ---------------------------------------------------------------------------------------------
// Records

v1::Job MakeJob(const std::string& id, JobState state) {
  v1::Job job;
  job.set_id(id);
  job.set_display_name(absl::StrCat("name of ", id));
  job.set_state(state);
  job.mutable_spec()->mutable_training()->set_seq_len(64);
  return job;
}

v1::JobEvent MakeEvent(const std::string& kind, JobState state) {
  v1::JobEvent event;
  event.set_kind(kind);
  event.set_state(state);
  event.set_message(absl::StrCat(kind, " happened"));
  return event;
}

// ---------------------------------------------------------------------------------------------
// Fixtures

// A concrete store as a Store (a StatusOr of a derived pointer does not convert).
template <typename T>
absl::StatusOr<std::unique_ptr<Store>> AsStore(absl::StatusOr<std::unique_ptr<T>> opened) {
  if (!opened.ok()) return opened.status();
  return std::unique_ptr<Store>(std::move(opened).value());
}

// One backend's store on fresh data: a new SQLite file or a new PostgreSQL database.
class StoreFixture : public ::testing::Test {
 protected:
  // Prepares the data and opens store_. Skips (PostgreSQL run by hand without a server) or
  // fails; callers return if IsSkipped() or HasFatalFailure().
  void SetUpBackend(Backend backend) {
    backend_ = backend;
    if (backend_ == Backend::kSqlite) {
      path_ = FreshDir() + "/slim.db";
    } else {
      absl::StatusOr<std::string> server = PostgresServerUrl();
      ASSERT_TRUE(server.ok()) << server.status();
      if (server->empty()) {
        GTEST_SKIP() << "no PostgreSQL server: set SLIM_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/postgres, or "
                        "run through ctest (which starts one with scripts/postgres-test-server.sh)";
      }
      server_url_ = *server;
      database_ = std::make_unique<TestDatabase>(server_url_, "");
    }
    store_ = OpenOrDie();
    ASSERT_NE(store_, nullptr);
  }

  // Another store object on the same data (a reopened slimd, or a second replica).
  absl::StatusOr<std::unique_ptr<Store>> Open() {
    if (backend_ == Backend::kSqlite) return AsStore(SqliteStore::Open(path_));
    return AsStore(PostgresStore::Open(database_->url()));
  }
  std::unique_ptr<Store> OpenOrDie() {
    absl::StatusOr<std::unique_ptr<Store>> store = Open();
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  // Writes `version` as the stored schema version (store_ must be closed for SQLite).
  void ForgeSchemaVersion(int version) {
    if (backend_ == Backend::kSqlite) {
      sqlite3* db = nullptr;
      ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
      ASSERT_EQ(sqlite3_exec(db, absl::StrCat("PRAGMA user_version = ", version).c_str(), nullptr, nullptr, nullptr),
                SQLITE_OK);
      sqlite3_close(db);
    } else {
      database_->Query(absl::StrCat("UPDATE schema_version SET version = ", version));
    }
  }

  // Creates a job with a fresh "job" id in `state`; returns its id.
  std::string AddJob(JobState state) {
    absl::StatusOr<std::string> id = store_->NewId("job");
    EXPECT_TRUE(id.ok()) << id.status();
    absl::StatusOr<v1::Job> job = store_->CreateJob(MakeJob(*id, state), MakeEvent("queued", state));
    EXPECT_TRUE(job.ok()) << job.status();
    return *id;
  }

  Backend backend_ = Backend::kSqlite;
  std::string path_;                        // SQLite
  std::string server_url_;                  // PostgreSQL
  std::unique_ptr<TestDatabase> database_;  // PostgreSQL
  std::unique_ptr<Store> store_;
};

// The contract, once per backend.
class StoreTest : public StoreFixture, public ::testing::WithParamInterface<Backend> {
 protected:
  void SetUp() override { SetUpBackend(GetParam()); }
};

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
                         });

// ---------------------------------------------------------------------------------------------
// The contract

TEST_P(StoreTest, IdsAreUniqueAndIncreasingPerPrefix) {
  EXPECT_EQ(*store_->NewId("job"), "job-000001");
  EXPECT_EQ(*store_->NewId("job"), "job-000002");
  EXPECT_EQ(*store_->NewId("ds"), "ds-000001");  // counters are per prefix
  EXPECT_EQ(*store_->NewId("job"), "job-000003");
  std::set<std::string> seen;
  std::string previous = "job-000003";
  for (int i = 0; i < 20; ++i) {
    const std::string id = *store_->NewId("job");
    EXPECT_TRUE(seen.insert(id).second) << id;
    EXPECT_LT(previous, id);  // zero padding keeps text order = numeric order below 10^6
    previous = id;
  }
  EXPECT_EQ(store_->NewId("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, CreateGetUpdateNumbersEventsWithoutGaps) {
  v1::Job job = MakeJob("job-a", v1::JOB_STATE_QUEUED);
  job.set_last_sequence(42);  // ignored: the store numbers events
  v1::JobEvent first = MakeEvent("queued", v1::JOB_STATE_QUEUED);
  first.set_sequence(99);
  absl::StatusOr<v1::Job> created = store_->CreateJob(job, first);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->last_sequence(), 1);

  absl::StatusOr<v1::Job> got = store_->GetJob("job-a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->display_name(), "name of job-a");
  EXPECT_EQ(got->spec().training().seq_len(), 64);
  EXPECT_EQ(got->last_sequence(), 1);

  for (int i = 2; i <= 6; ++i) {
    v1::Job update = *got;
    update.set_state(v1::JOB_STATE_RUNNING);
    update.mutable_progress()->set_step(i);
    update.set_last_sequence(0);  // ignored
    absl::StatusOr<v1::Job> stored = store_->UpdateJob(update, MakeEvent("progress", v1::JOB_STATE_RUNNING));
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->last_sequence(), i);
  }
  got = store_->GetJob("job-a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->last_sequence(), 6);
  EXPECT_EQ(got->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(got->progress().step(), 6);

  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents("job-a", 0, 100);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ((*events)[i].sequence(), i + 1);
  EXPECT_EQ((*events)[0].kind(), "queued");
  EXPECT_EQ((*events)[5].kind(), "progress");

  // A stale snapshot saved without an event cannot move last_sequence back.
  v1::Job stale = *created;
  stale.mutable_progress()->set_tokens(1234);
  ASSERT_TRUE(store_->SaveJob(stale).ok());
  got = store_->GetJob("job-a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->progress().tokens(), 1234);
  EXPECT_EQ(got->last_sequence(), 6);
  absl::StatusOr<v1::Job> next = store_->UpdateJob(*got, MakeEvent("eval", v1::JOB_STATE_RUNNING));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->last_sequence(), 7);
}

TEST_P(StoreTest, DuplicateAndUnknownJobs) {
  ASSERT_TRUE(
      store_->CreateJob(MakeJob("job-a", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_EQ(store_->CreateJob(MakeJob("job-a", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  // The failed insert left nothing behind: still exactly one event.
  EXPECT_EQ(store_->ListEvents("job-a", 0, 10)->size(), 1u);

  EXPECT_EQ(store_->UpdateJob(MakeJob("job-x", v1::JOB_STATE_RUNNING), MakeEvent("started", v1::JOB_STATE_RUNNING))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetJob("job-x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->SaveJob(MakeJob("job-x", v1::JOB_STATE_RUNNING)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListEvents("job-x", 0, 10).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(
      store_->CreateJob(MakeJob("", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

// CreateJob with a request id (AIP-155): a second create by the same tenant with the same id
// returns the first job and inserts nothing; another tenant's id is its own.
TEST_P(StoreTest, RequestIdsMakeCreatesIdempotentPerTenant) {
  v1::Job first = MakeJob("job-a", v1::JOB_STATE_QUEUED);
  first.set_tenant("alice");
  first.set_request_id("req-1");
  ASSERT_TRUE(store_->CreateJob(first, MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  v1::Job retry = MakeJob("job-b", v1::JOB_STATE_QUEUED);
  retry.set_tenant("alice");
  retry.set_request_id("req-1");
  absl::StatusOr<v1::Job> again = store_->CreateJob(retry, MakeEvent("queued", v1::JOB_STATE_QUEUED));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), "job-a");
  EXPECT_EQ(store_->GetJob("job-b").status().code(), absl::StatusCode::kNotFound) << "nothing inserted";
  EXPECT_EQ(store_->ListEvents("job-a", 0, 10)->size(), 1u);

  absl::StatusOr<v1::Job> found = store_->JobByRequest("alice", "req-1");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->id(), "job-a");
  EXPECT_EQ(store_->JobByRequest("alice", "req-2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->JobByRequest("bob", "req-1").status().code(), absl::StatusCode::kNotFound);

  v1::Job bobs = MakeJob("job-c", v1::JOB_STATE_QUEUED);
  bobs.set_tenant("bob");
  bobs.set_request_id("req-1");
  absl::StatusOr<v1::Job> created = store_->CreateJob(bobs, MakeEvent("queued", v1::JOB_STATE_QUEUED));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->id(), "job-c");
  // Jobs without a request id never collide.
  ASSERT_TRUE(store_->CreateJob(MakeJob("job-d", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  ASSERT_TRUE(store_->CreateJob(MakeJob("job-e", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
}

TEST_P(StoreTest, ListJobsPagesNewestFirst) {
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) ids.push_back(AddJob(i % 2 == 0 ? v1::JOB_STATE_QUEUED : v1::JOB_STATE_SUCCEEDED));

  std::vector<std::string> listed;
  std::vector<size_t> page_sizes;
  std::string token;
  for (int pages = 0; pages < 10; ++pages) {
    absl::StatusOr<Page<v1::Job>> page = store_->ListJobs({}, 3, token);
    ASSERT_TRUE(page.ok()) << page.status();
    page_sizes.push_back(page->items.size());
    for (const v1::Job& job : page->items) listed.push_back(job.id());
    token = page->next_page_token;
    if (token.empty()) break;
  }
  EXPECT_EQ(page_sizes, (std::vector<size_t>{3, 3, 1}));
  EXPECT_EQ(listed, std::vector<std::string>(ids.rbegin(), ids.rend()));

  // Exactly one full page: no next token.
  absl::StatusOr<Page<v1::Job>> all = store_->ListJobs({}, 7, "");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->items.size(), 7u);
  EXPECT_TRUE(all->next_page_token.empty());

  // Filtered by state: QUEUED are ids 0, 2, 4, 6.
  listed.clear();
  token.clear();
  page_sizes.clear();
  for (int pages = 0; pages < 10; ++pages) {
    absl::StatusOr<Page<v1::Job>> page = store_->ListJobs({v1::JOB_STATE_QUEUED}, 3, token);
    ASSERT_TRUE(page.ok()) << page.status();
    page_sizes.push_back(page->items.size());
    for (const v1::Job& job : page->items) {
      EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
      listed.push_back(job.id());
    }
    token = page->next_page_token;
    if (token.empty()) break;
  }
  EXPECT_EQ(page_sizes, (std::vector<size_t>{3, 1}));
  EXPECT_EQ(listed, (std::vector<std::string>{ids[6], ids[4], ids[2], ids[0]}));

  absl::StatusOr<Page<v1::Job>> two_states =
      store_->ListJobs({v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_QUEUED, v1::JOB_STATE_QUEUED}, 100, "");
  ASSERT_TRUE(two_states.ok());
  EXPECT_EQ(two_states->items.size(), 7u);
  absl::StatusOr<Page<v1::Job>> none = store_->ListJobs({v1::JOB_STATE_FAILED}, 100, "");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->items.empty());
  EXPECT_TRUE(none->next_page_token.empty());

  // A state change is visible to the filter (the state column follows the record).
  v1::Job job = *store_->GetJob(ids[1]);
  job.set_state(v1::JOB_STATE_FAILED);
  ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("failed", v1::JOB_STATE_FAILED)).ok());
  none = store_->ListJobs({v1::JOB_STATE_FAILED}, 100, "");
  ASSERT_TRUE(none.ok());
  ASSERT_EQ(none->items.size(), 1u);
  EXPECT_EQ(none->items[0].id(), ids[1]);
}

TEST_P(StoreTest, JobsInStatesOldestFirst) {
  const std::string a = AddJob(v1::JOB_STATE_RUNNING);
  const std::string b = AddJob(v1::JOB_STATE_SUCCEEDED);
  const std::string c = AddJob(v1::JOB_STATE_QUEUED);
  const std::string d = AddJob(v1::JOB_STATE_CANCELLING);
  absl::StatusOr<std::vector<v1::Job>> jobs =
      store_->JobsInStates({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING});
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  std::vector<std::string> ids;
  for (const v1::Job& job : *jobs) ids.push_back(job.id());
  EXPECT_EQ(ids, (std::vector<std::string>{a, c, d}));
  EXPECT_TRUE(store_->JobsInStates({})->empty());
  (void)b;
}

TEST_P(StoreTest, CountJobsByStateFollowsUpdates) {
  absl::StatusOr<std::map<JobState, int64_t>> counts = store_->CountJobsByState();
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_TRUE(counts->empty());
  AddJob(v1::JOB_STATE_QUEUED);
  AddJob(v1::JOB_STATE_QUEUED);
  const std::string running = AddJob(v1::JOB_STATE_QUEUED);
  AddJob(v1::JOB_STATE_SUCCEEDED);
  v1::Job job = *store_->GetJob(running);
  job.set_state(v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("started", v1::JOB_STATE_RUNNING)).ok());
  counts = store_->CountJobsByState();
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(*counts, (std::map<JobState, int64_t>{
                         {v1::JOB_STATE_QUEUED, 2}, {v1::JOB_STATE_RUNNING, 1}, {v1::JOB_STATE_SUCCEEDED, 1}}));
}

TEST_P(StoreTest, ListEventsAfterSequenceWithLimit) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  v1::Job job = *store_->GetJob(id);
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("progress", v1::JOB_STATE_RUNNING)).ok());
  // 10 events in all.
  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents(id, 4, 3);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[0].sequence(), 5);
  EXPECT_EQ((*events)[1].sequence(), 6);
  EXPECT_EQ((*events)[2].sequence(), 7);
  events = store_->ListEvents(id, 8, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].sequence(), 10);
  EXPECT_TRUE(store_->ListEvents(id, 10, 100)->empty());
  EXPECT_EQ(store_->ListEvents(id, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, DatasetsPutGetListDelete) {
  for (int i = 1; i <= 5; ++i) {
    v1::Dataset d;
    d.set_id(absl::StrCat("ds-", i));
    d.set_name(absl::StrCat("data ", i));
    d.set_size_bytes(i * 100);
    ASSERT_TRUE(store_->PutDataset(d).ok());
  }
  v1::Dataset dup;
  dup.set_id("ds-3");
  EXPECT_EQ(store_->PutDataset(dup).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->GetDataset("ds-3")->name(), "data 3");  // the original is untouched
  EXPECT_EQ(store_->GetDataset("ds-3")->size_bytes(), 300);
  EXPECT_EQ(store_->GetDataset("ds-9").status().code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(store_->DeleteDataset("ds-4").ok());
  EXPECT_EQ(store_->DeleteDataset("ds-4").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetDataset("ds-4").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<Page<v1::Dataset>> page = store_->ListDatasets(2, "");
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_EQ(page->items[0].id(), "ds-5");
  EXPECT_EQ(page->items[1].id(), "ds-3");
  ASSERT_FALSE(page->next_page_token.empty());
  // Deleting the item the token points at does not break the token.
  ASSERT_TRUE(store_->DeleteDataset("ds-3").ok());
  page = store_->ListDatasets(2, page->next_page_token);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_EQ(page->items[0].id(), "ds-2");
  EXPECT_EQ(page->items[1].id(), "ds-1");
  EXPECT_TRUE(page->next_page_token.empty());
}

TEST_P(StoreTest, ModelsPutGetList) {
  for (int i = 1; i <= 3; ++i) {
    v1::Model m;
    m.set_id(absl::StrCat("model-", i));
    m.set_parameters(1000 * i);
    m.set_config_json("{\"d_model\": 64}");
    ASSERT_TRUE(store_->PutModel(m).ok());
  }
  v1::Model dup;
  dup.set_id("model-2");
  EXPECT_EQ(store_->PutModel(dup).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->GetModel("model-2")->parameters(), 2000);
  EXPECT_EQ(store_->GetModel("model-2")->config_json(), "{\"d_model\": 64}");
  EXPECT_EQ(store_->GetModel("model-7").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<Page<v1::Model>> page = store_->ListModels(1000, "");
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 3u);
  EXPECT_EQ(page->items[0].id(), "model-3");
  EXPECT_EQ(page->items[2].id(), "model-1");
  EXPECT_TRUE(page->next_page_token.empty());

  ASSERT_TRUE(store_->DeleteModel("model-2").ok());
  EXPECT_EQ(store_->DeleteModel("model-2").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetModel("model-2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListModels(1000, "")->items.size(), 2u);
}

// Only ended jobs are deleted, with every event, in one transaction; the others stay whole.
TEST_P(StoreTest, DeleteJobRemovesEndedJobsAndTheirEventsOnly) {
  const std::string done = AddJob(v1::JOB_STATE_SUCCEEDED);
  const std::string kept = AddJob(v1::JOB_STATE_SUCCEEDED);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(store_->UpdateJob(*store_->GetJob(done), MakeEvent("progress", v1::JOB_STATE_SUCCEEDED)).ok());
  }
  ASSERT_TRUE(store_->DeleteJob(done).ok());
  EXPECT_EQ(store_->GetJob(done).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteJob(done).code(), absl::StatusCode::kNotFound);
  // Its events went with it: a record stored again under its id has only its own first one.
  ASSERT_TRUE(store_->CreateJob(MakeJob(done, v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_EQ(store_->ListEvents(done, 0, 100)->size(), 1u);
  EXPECT_EQ(store_->GetJob(done)->last_sequence(), 1);
  EXPECT_EQ(store_->ListEvents(kept, 0, 100)->size(), 1u);
  for (const JobState state : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING}) {
    const std::string active = AddJob(state);
    const absl::Status refused = store_->DeleteJob(active);
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
    EXPECT_NE(refused.message().find(v1::JobState_Name(state).substr(10)), absl::string_view::npos) << refused;
    EXPECT_TRUE(store_->GetJob(active).ok());
    EXPECT_EQ(store_->ListEvents(active, 0, 100)->size(), 1u);
  }
  for (const JobState state : {v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}) {
    EXPECT_TRUE(store_->DeleteJob(AddJob(state)).ok());
  }
  absl::StatusOr<std::map<v1::JobState, int64_t>> counts = store_->CountJobsByState();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ((*counts)[v1::JOB_STATE_SUCCEEDED], 1);
  EXPECT_EQ((*counts)[v1::JOB_STATE_QUEUED], 2);
  EXPECT_EQ(counts->count(v1::JOB_STATE_FAILED), 0u);
}

TEST_P(StoreTest, SerializedRecordsRoundTripExactly) {
  // The serialized record holds bytes that text handling would damage: NUL, bytes >= 0x80
  // (multi-byte UTF-8 and varints), quotes, backslashes.
  v1::Model model;
  model.set_id("model-bytes");
  model.set_parameters(int64_t{1} << 40);
  const std::string config = std::string("quote ' backslash \\ nul ") + std::string(1, '\0') + " e-acute \xc3\xa9 end";
  model.set_config_json(config);
  ASSERT_TRUE(store_->PutModel(model).ok());
  absl::StatusOr<v1::Model> got = store_->GetModel("model-bytes");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->config_json(), config);
  EXPECT_EQ(got->parameters(), int64_t{1} << 40);
  absl::StatusOr<Page<v1::Model>> page = store_->ListModels(10, "");
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 1u);
  EXPECT_EQ(page->items[0].config_json(), config);
}

TEST_P(StoreTest, BadPageTokensAndSizesAreInvalidArgument) {
  AddJob(v1::JOB_STATE_QUEUED);
  for (const std::string token : {"abc", "-5", "0", "12x", " 12", "+3", "1.5", "99999999999999999999"}) {
    absl::Status status = store_->ListJobs({}, 10, token).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << token;
    EXPECT_EQ(status.message(), "page_token: malformed") << token;
    EXPECT_EQ(store_->ListDatasets(10, token).status().code(), absl::StatusCode::kInvalidArgument) << token;
    EXPECT_EQ(store_->ListModels(10, token).status().code(), absl::StatusCode::kInvalidArgument) << token;
  }
  for (int size : {0, -1, 1001}) {
    absl::Status status = store_->ListJobs({}, size, "").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_NE(status.message().find("page_size"), absl::string_view::npos) << status;
    EXPECT_EQ(store_->ListDatasets(size, "").status().code(), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_EQ(store_->ListModels(size, "").status().code(), absl::StatusCode::kInvalidArgument) << size;
  }
  EXPECT_TRUE(store_->ListJobs({}, 1, "").ok());
  EXPECT_TRUE(store_->ListJobs({}, 1000, "").ok());
  // A well-formed token past the end is simply an empty page.
  absl::StatusOr<Page<v1::Job>> page = store_->ListJobs({}, 10, "1");
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->items.empty());
}

TEST_P(StoreTest, DataSurvivesReopening) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  v1::Job job = *store_->GetJob(id);
  job.set_state(v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("started", v1::JOB_STATE_RUNNING)).ok());
  v1::Dataset dataset;
  dataset.set_id(*store_->NewId("ds"));
  dataset.set_sha256("ab12");
  ASSERT_TRUE(store_->PutDataset(dataset).ok());
  v1::Model model;
  model.set_id("model-000001");
  ASSERT_TRUE(store_->PutModel(model).ok());
  store_.reset();

  store_ = OpenOrDie();
  ASSERT_NE(store_, nullptr);
  absl::StatusOr<v1::Job> reread = store_->GetJob(id);
  ASSERT_TRUE(reread.ok()) << reread.status();
  EXPECT_EQ(reread->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(reread->last_sequence(), 2);
  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents(id, 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].kind(), "started");
  EXPECT_EQ(store_->GetDataset(dataset.id())->sha256(), "ab12");
  EXPECT_TRUE(store_->GetModel("model-000001").ok());
  EXPECT_EQ(store_->JobsInStates({v1::JOB_STATE_RUNNING})->size(), 1u);
  // Counters persist: ids are never reissued.
  EXPECT_EQ(*store_->NewId("job"), "job-000002");
  EXPECT_EQ(*store_->NewId("ds"), "ds-000002");
  // Sequences continue.
  EXPECT_EQ(store_->UpdateJob(*reread, MakeEvent("progress", v1::JOB_STATE_RUNNING))->last_sequence(), 3);
}

// `threads` threads each call UpdateJob `per_thread` times on job `id`, thread t through
// stores[t % stores.size()]; checks that the sequences returned and stored are exactly
// 2..1+threads*per_thread (the first event is 1), each event stored once.
void CheckConcurrentUpdates(const std::vector<Store*>& stores, const std::string& id, int threads, int per_thread) {
  std::vector<std::vector<int64_t>> returned(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      Store& store = *stores[t % stores.size()];
      v1::Job job = MakeJob(id, v1::JOB_STATE_RUNNING);
      for (int i = 0; i < per_thread; ++i) {
        job.mutable_progress()->set_step(i);
        v1::JobEvent event = MakeEvent("progress", v1::JOB_STATE_RUNNING);
        event.set_message(absl::StrCat(t, ":", i));
        absl::StatusOr<v1::Job> stored = store.UpdateJob(job, event);
        EXPECT_TRUE(stored.ok()) << stored.status();
        if (stored.ok()) returned[t].push_back(stored->last_sequence());
      }
    });
  }
  for (std::thread& worker : workers) worker.join();

  const int total = 1 + threads * per_thread;
  std::set<int64_t> all;
  for (const std::vector<int64_t>& seqs : returned) {
    EXPECT_EQ(seqs.size(), static_cast<size_t>(per_thread));
    for (size_t i = 1; i < seqs.size(); ++i) EXPECT_LT(seqs[i - 1], seqs[i]);  // each thread's calls are ordered
    all.insert(seqs.begin(), seqs.end());
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(threads * per_thread));  // no sequence handed out twice
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(*all.begin(), 2);
  EXPECT_EQ(*all.rbegin(), total);

  absl::StatusOr<std::vector<v1::JobEvent>> events = stores[0]->ListEvents(id, 0, 1000);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), static_cast<size_t>(total));
  std::set<std::string> messages;
  for (int i = 0; i < total; ++i) {
    EXPECT_EQ((*events)[i].sequence(), i + 1);
    messages.insert((*events)[i].message());
  }
  EXPECT_EQ(messages.size(), static_cast<size_t>(total));  // every event stored once
  for (Store* store : stores) EXPECT_EQ(store->GetJob(id)->last_sequence(), total);
}

TEST_P(StoreTest, ConcurrentUpdatesGetEverySequenceOnce) {
  const std::string id = AddJob(v1::JOB_STATE_RUNNING);
  CheckConcurrentUpdates({store_.get()}, id, /*threads=*/4, /*per_thread=*/50);
}

// Two store objects on the same data behave as one store: two slimd replicas on one
// PostgreSQL database (or two processes on one SQLite file).
TEST_P(StoreTest, TwoStoresOnOneDatabaseNumberEventsAndIssueIdsOnce) {
  std::unique_ptr<Store> other = OpenOrDie();
  ASSERT_NE(other, nullptr);
  const std::string id = AddJob(v1::JOB_STATE_RUNNING);
  CheckConcurrentUpdates({store_.get(), other.get()}, id, /*threads=*/4, /*per_thread=*/40);

  constexpr int kThreads = 4;
  constexpr int kPerThread = 40;
  std::vector<std::vector<std::string>> ids(kThreads);
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      Store& store = t % 2 == 0 ? *store_ : *other;
      for (int i = 0; i < kPerThread; ++i) {
        absl::StatusOr<std::string> id = store.NewId("run");
        EXPECT_TRUE(id.ok()) << id.status();
        if (id.ok()) ids[t].push_back(*id);
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  std::set<std::string> unique;
  for (const std::vector<std::string>& list : ids) unique.insert(list.begin(), list.end());
  EXPECT_EQ(unique.size(), static_cast<size_t>(kThreads * kPerThread));
  // Nothing skipped either: exactly run-000001 .. run-000160.
  EXPECT_EQ(*unique.begin(), "run-000001");
  EXPECT_EQ(*unique.rbegin(), absl::StrCat("run-000", kThreads * kPerThread));
  EXPECT_EQ(*other->NewId("run"), absl::StrCat("run-000", kThreads * kPerThread + 1));
}

TEST_P(StoreTest, RacingCreatesOfOneIdInsertItOnce) {
  std::unique_ptr<Store> other = OpenOrDie();
  ASSERT_NE(other, nullptr);
  constexpr int kThreads = 4;
  std::atomic<int> created{0};
  std::atomic<int> already_exists{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      Store& store = t % 2 == 0 ? *store_ : *other;
      v1::Job job = MakeJob("job-race", v1::JOB_STATE_QUEUED);
      job.set_display_name(absl::StrCat("creator ", t));
      absl::StatusOr<v1::Job> result = store.CreateJob(job, MakeEvent("queued", v1::JOB_STATE_QUEUED));
      if (result.ok()) {
        ++created;
      } else if (result.status().code() == absl::StatusCode::kAlreadyExists) {
        ++already_exists;
      } else {
        ADD_FAILURE() << result.status();
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  EXPECT_EQ(created.load(), 1);
  EXPECT_EQ(already_exists.load(), kThreads - 1);
  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->ListEvents("job-race", 0, 10);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(events->size(), 1u);
}

// Listings for one tenant return its records only (and shared models), page by page, without
// scanning the others' (an indexed tenant column).
TEST_P(StoreTest, ListingsForATenantReturnOnlyItsRecords) {
  const auto add_job = [&](const std::string& tenant, JobState state) {
    const std::string id = *store_->NewId("job");
    v1::Job job = MakeJob(id, state);
    job.set_tenant(tenant);
    EXPECT_TRUE(store_->CreateJob(job, MakeEvent("queued", state)).ok());
    return id;
  };
  const std::string a1 = add_job("alice", v1::JOB_STATE_QUEUED);
  add_job("bob", v1::JOB_STATE_QUEUED);
  const std::string a2 = add_job("alice", v1::JOB_STATE_SUCCEEDED);
  add_job("", v1::JOB_STATE_QUEUED);
  const std::string a3 = add_job("alice", v1::JOB_STATE_QUEUED);
  for (int i = 0; i < 3; ++i) add_job("bob", v1::JOB_STATE_QUEUED);

  // Alice's jobs, newest first, one per page.
  std::vector<std::string> seen;
  std::string token;
  do {
    absl::StatusOr<Page<v1::Job>> page = store_->ListJobs({}, 1, token, ListScope::Of("alice"));
    ASSERT_TRUE(page.ok()) << page.status();
    for (const v1::Job& job : page->items) seen.push_back(job.id());
    token = page->next_page_token;
  } while (!token.empty() && seen.size() < 10);
  EXPECT_EQ(seen, (std::vector<std::string>{a3, a2, a1}));
  absl::StatusOr<Page<v1::Job>> queued = store_->ListJobs({v1::JOB_STATE_QUEUED}, 10, "", ListScope::Of("alice"));
  ASSERT_TRUE(queued.ok());
  ASSERT_EQ(queued->items.size(), 2u);
  EXPECT_EQ(queued->items[0].id(), a3);
  EXPECT_EQ(store_->ListJobs({}, 100, "", ListScope::Of("carol"))->items.size(), 0u);
  EXPECT_EQ(store_->ListJobs({}, 100, "")->items.size(), 8u) << "no scope: every tenant";

  for (const auto& [id, tenant] : std::vector<std::pair<std::string, std::string>>{
           {"ds-1", "alice"}, {"ds-2", "bob"}, {"ds-3", "alice"}}) {
    v1::Dataset d;
    d.set_id(id);
    d.set_tenant(tenant);
    ASSERT_TRUE(store_->PutDataset(d).ok());
  }
  absl::StatusOr<Page<v1::Dataset>> datasets = store_->ListDatasets(10, "", ListScope::Of("alice"));
  ASSERT_TRUE(datasets.ok()) << datasets.status();
  ASSERT_EQ(datasets->items.size(), 2u);
  EXPECT_EQ(datasets->items[0].id(), "ds-3");
  EXPECT_EQ(datasets->items[1].id(), "ds-1");

  for (const auto& [id, tenant] : std::vector<std::pair<std::string, std::string>>{
           {"model-1", ""}, {"model-2", "bob"}, {"model-3", "alice"}}) {
    v1::Model m;
    m.set_id(id);
    m.set_tenant(tenant);
    ASSERT_TRUE(store_->PutModel(m).ok());
  }
  absl::StatusOr<Page<v1::Model>> models = store_->ListModels(10, "", ListScope::Of("alice"));
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->items.size(), 2u) << "its own and the shared one";
  EXPECT_EQ(models->items[0].id(), "model-3");
  EXPECT_EQ(models->items[1].id(), "model-1");
  EXPECT_EQ(store_->ListModels(10, "")->items.size(), 3u);
}

TEST_P(StoreTest, NewerSchemaVersionIsRefused) {
  store_.reset();
  ForgeSchemaVersion(99);
  absl::StatusOr<std::unique_ptr<Store>> store = Open();
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("schema version 99"), absl::string_view::npos) << store.status();
}

// ---------------------------------------------------------------------------------------------
// SQLite only

// A database of schema version 1 (no tenant columns) is upgraded when opened, the columns
// filled from the records.
TEST(SqliteStoreOpen, UpgradesAVersion1Database) {
  const std::string path = FreshDir() + "/v1.db";
  {
    absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    v1::Job job = MakeJob("job-000001", v1::JOB_STATE_QUEUED);
    job.set_tenant("alice");
    ASSERT_TRUE((*store)->CreateJob(job, MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
    ASSERT_TRUE((*store)->CreateJob(MakeJob("job-000002", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
    v1::Dataset dataset;
    dataset.set_id("ds-000001");
    dataset.set_tenant("alice");
    ASSERT_TRUE((*store)->PutDataset(dataset).ok());
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  // What version 1 had: no request ids, no tenant columns.
  ASSERT_EQ(sqlite3_exec(db, "DROP INDEX jobs_by_request; ALTER TABLE jobs DROP COLUMN request_id", nullptr, nullptr,
                         nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  for (const char* table : {"jobs", "datasets", "models"}) {
    ASSERT_EQ(sqlite3_exec(db, absl::StrCat("DROP INDEX ", table, "_by_tenant; ALTER TABLE ", table, " DROP COLUMN tenant")
                                   .c_str(),
                           nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(db);
  }
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 1", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);

  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<Page<v1::Job>> alices = (*store)->ListJobs({}, 10, "", ListScope::Of("alice"));
  ASSERT_TRUE(alices.ok()) << alices.status();
  ASSERT_EQ(alices->items.size(), 1u);
  EXPECT_EQ(alices->items[0].id(), "job-000001");
  EXPECT_EQ((*store)->ListJobs({}, 10, "")->items.size(), 2u);
  EXPECT_EQ((*store)->ListDatasets(10, "", ListScope::Of("alice"))->items.size(), 1u);
  // New records after the upgrade carry their tenant too.
  v1::Job later = MakeJob("job-000003", v1::JOB_STATE_QUEUED);
  later.set_tenant("alice");
  ASSERT_TRUE((*store)->CreateJob(later, MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_EQ((*store)->ListJobs({}, 10, "", ListScope::Of("alice"))->items.size(), 2u);
}

// Reads have their own connection: a write that is waiting for SQLite's write lock (held here by
// another connection, as a slow commit's fsync would hold it) does not hold up reads of what is
// committed. With one shared connection every read below would wait until the write gave up.
TEST(SqliteStoreOpen, ReadsDoNotWaitForAWriteInProgress) {
  const std::string path = FreshDir() + "/reads.db";
  absl::StatusOr<std::unique_ptr<SqliteStore>> opened = SqliteStore::Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<SqliteStore> store = *std::move(opened);
  const std::string id = "job-000001";
  ASSERT_TRUE(store->CreateJob(MakeJob(id, v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  absl::Notification write_started, write_done;
  absl::Status written;
  std::thread writer([&] {
    write_started.Notify();
    // Waits for the lock (busy_timeout, 5 s) while holding whatever the store holds for a write.
    written = store->UpdateJob(MakeJob(id, v1::JOB_STATE_RUNNING), MakeEvent("started", v1::JOB_STATE_RUNNING)).status();
    write_done.Notify();
  });
  write_started.WaitForNotification();
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<v1::Job> job = store->GetJob(id);
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);  // the committed state
    absl::StatusOr<std::vector<v1::JobEvent>> events = store->ListEvents(id, 0, 10);
    ASSERT_TRUE(events.ok()) << events.status();
    EXPECT_EQ(events->size(), 1u);
  }
  EXPECT_FALSE(write_done.HasBeenNotified()) << "the reads waited for the write";
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  writer.join();
  sqlite3_close(other);
  ASSERT_TRUE(written.ok()) << written;  // the lock came free within busy_timeout
  // A committed write is visible to the next read at once.
  EXPECT_EQ(store->GetJob(id)->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(store->ListEvents(id, 0, 10)->size(), 2u);
}

TEST(SqliteStoreOpen, SetsSchemaVersionAndWal) {
  const std::string path = FreshDir() + "/new.db";
  ASSERT_TRUE(SqliteStore::Open(path).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  auto query = [&](const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    std::string value;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
      value = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
    return value;
  };
  EXPECT_EQ(query("PRAGMA user_version"), "3");
  EXPECT_EQ(query("PRAGMA journal_mode"), "wal");  // persistent in the file
  sqlite3_close(db);
}

TEST(SqliteStoreOpen, CoordinatesNoReplicas) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(":memory:");
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE(
      (*store)->CreateJob(MakeJob("job-s", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_EQ((*store)->replica_id(), "");
  EXPECT_EQ((*store)->ClaimJob("job-s", absl::Seconds(5)).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ((*store)->RenewLeases(absl::Seconds(5)).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ((*store)->TakeOverExpiredJobs(absl::Seconds(5)).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ((*store)->RequestCancel("job-s").status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ((*store)->ReleaseJob("job-s").code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE((*store)->Listen([](const StoreNotification&) {}).ok());  // nothing to hear
  (*store)->StopListening();
}

TEST(SqliteStoreOpen, InMemoryWorks) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(":memory:");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*(*store)->NewId("model"), "model-000001");
  ASSERT_TRUE(
      (*store)->CreateJob(MakeJob("job-m", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_EQ((*store)->GetJob("job-m")->last_sequence(), 1);
}

TEST(SqliteStoreOpen, MissingDirectoryIsInternal) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(FreshDir() + "/no/such/dir/slim.db");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(store.status().message().find("no/such/dir"), absl::string_view::npos) << store.status();
}

TEST(SqliteStoreOpen, NotADatabaseIsInternal) {
  const std::string path = FreshDir() + "/junk.db";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  const std::string junk(4096, 'x');
  std::fwrite(junk.data(), 1, junk.size(), f);
  std::fclose(f);
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(store.status().message().find("not a database"), absl::string_view::npos) << store.status();
}

// An empty slimd.db is a store that lost its contents (truncated, a full disk, a bad restore),
// not a new one: refused, so that slimd does not start beside datasets it no longer lists.
TEST(SqliteStoreOpen, EmptyFileIsRefusedNotTakenForANewStore) {
  const std::string path = FreshDir() + "/slimd.db";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("exists but is empty (0 bytes)"), absl::string_view::npos) << store.status();
  EXPECT_EQ(std::filesystem::file_size(path), 0u) << "left as it was";
}

// Another program's SQLite database is not turned into a slimd store.
TEST(SqliteStoreOpen, ForeignDatabaseIsRefused) {
  const std::string path = FreshDir() + "/other.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE invoices (id INTEGER)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("not a slimd database: it has tables (invoices)"), absl::string_view::npos)
      << store.status();
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only

// A loopback TCP port nobody listens on (bound, then released).
int UnusedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return 1;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(PostgresStoreOpen, MalformedUrlIsInvalidArgument) {
  for (const std::string url : {"postgresql://127.0.0.1:5432/db?no_such_option=1", "host=127.0.0.1 bogus=1",
                                "postgresql://[::1/db", "host='unterminated"}) {
    absl::StatusOr<std::unique_ptr<PostgresStore>> store = PostgresStore::Open(url);
    ASSERT_FALSE(store.ok()) << url;
    EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument) << url << ": " << store.status();
    EXPECT_NE(store.status().message().find("malformed connection string"), absl::string_view::npos) << store.status();
  }
  PostgresStoreOptions no_connections;
  no_connections.pool_size = 0;
  EXPECT_EQ(PostgresStore::Open("postgresql://127.0.0.1/db", no_connections).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PostgresStoreOpen, UnreachableServerIsUnavailable) {
  const int port = UnusedPort();
  absl::StatusOr<std::unique_ptr<PostgresStore>> store = PostgresStore::Open(
      absl::StrCat("postgresql://slim:secret-password@127.0.0.1:", port, "/slim?connect_timeout=5"));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_NE(store.status().message().find(absl::StrCat(port)), absl::string_view::npos) << store.status();
  EXPECT_EQ(store.status().message().find("secret-password"), absl::string_view::npos) << store.status();
  EXPECT_EQ(store.status().message().find('\n'), absl::string_view::npos) << store.status();
}

class PostgresStoreTest : public StoreFixture {
 protected:
  void SetUp() override { SetUpBackend(Backend::kPostgres); }
};

TEST_F(PostgresStoreTest, MissingDatabaseIsUnavailable) {
  absl::StatusOr<std::unique_ptr<PostgresStore>> store =
      PostgresStore::Open(WithDatabase(server_url_, "slim_no_such_database"));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_NE(store.status().message().find("slim_no_such_database"), absl::string_view::npos) << store.status();
}

TEST_F(PostgresStoreTest, SchemaHasVersionAndFleetColumns) {
  EXPECT_EQ(database_->Query("SELECT version FROM schema_version"), "4");
  EXPECT_EQ(database_->Query("SELECT COUNT(*) FROM schema_version"), "1");
  EXPECT_EQ(database_->Query("SELECT string_agg(column_name, ',' ORDER BY column_name) FROM "
                             "information_schema.columns WHERE table_name = 'jobs' AND column_name IN "
                             "('owner', 'lease_expires_at', 'cancel_requested', 'tenant')"),
            "cancel_requested,lease_expires_at,owner,tenant");
  EXPECT_EQ(database_->Query("SELECT data_type FROM information_schema.columns WHERE table_name = 'events' AND "
                             "column_name = 'data'"),
            "bytea");
  // A record's indexed columns mirror its protobuf.
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  EXPECT_EQ(database_->Query(absl::StrCat("SELECT state FROM jobs WHERE id = '", id, "'")),
            absl::StrCat(static_cast<int>(v1::JOB_STATE_QUEUED)));
}

TEST_F(PostgresStoreTest, ReplicasOpeningAnEmptyDatabaseTogetherCreateTheSchemaOnce) {
  const TestDatabase fresh(server_url_, "_fresh");
  constexpr int kReplicas = 4;
  std::vector<absl::Status> results(kReplicas);
  std::vector<std::thread> threads;
  for (int r = 0; r < kReplicas; ++r) {
    threads.emplace_back([&, r] { results[r] = PostgresStore::Open(fresh.url()).status(); });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& status : results) EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(fresh.Query("SELECT COUNT(*) FROM schema_version"), "1");
}

TEST_F(PostgresStoreTest, UpdatesLeaveTheFleetColumnsAlone) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  database_->Query(
      absl::StrCat("UPDATE jobs SET owner = 'replica-a', lease_expires_at = now() + interval '1 minute' "
                   "WHERE id = '",
                   id, "'"));
  v1::Job job = *store_->GetJob(id);
  job.set_state(v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("started", v1::JOB_STATE_RUNNING)).ok());
  ASSERT_TRUE(store_->SaveJob(job).ok());
  EXPECT_EQ(database_->Query(absl::StrCat("SELECT owner FROM jobs WHERE id = '", id, "'")), "replica-a");
  EXPECT_EQ(database_->Query(absl::StrCat("SELECT lease_expires_at IS NOT NULL FROM jobs WHERE id = '", id, "'")), "t");
}

// Collects notifications of one channel on its own connection.
class Listener : public pqxx::notification_receiver {
 public:
  Listener(pqxx::connection& connection, const std::string& channel)
      : pqxx::notification_receiver(connection, channel) {}
  void operator()(const std::string& payload, int) override { payloads.push_back(payload); }
  // Waits for notifications until `count` have arrived or 30 s have passed.
  void WaitFor(size_t count) {
    for (int i = 0; i < 30 && payloads.size() < count; ++i) conn().await_notification(1, 0);
  }
  std::vector<std::string> payloads;
};

TEST_F(PostgresStoreTest, NotifiesEachCommittedEvent) {
  pqxx::connection connection(database_->url());
  Listener listener(connection, PostgresStore::kEventsChannel);
  ASSERT_TRUE(
      store_->CreateJob(MakeJob("job-n", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  v1::Job job = *store_->GetJob("job-n");
  ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("started", v1::JOB_STATE_RUNNING)).ok());
  // Failed transactions notify nothing: a duplicate create, an update of an unknown job.
  EXPECT_FALSE(
      store_->CreateJob(MakeJob("job-n", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_FALSE(store_->UpdateJob(MakeJob("job-x", v1::JOB_STATE_RUNNING), MakeEvent("x", v1::JOB_STATE_RUNNING)).ok());
  ASSERT_TRUE(store_->SaveJob(job).ok());  // no event, no notification
  ASSERT_TRUE(store_->UpdateJob(job, MakeEvent("progress", v1::JOB_STATE_RUNNING)).ok());
  listener.WaitFor(3);
  EXPECT_EQ(listener.payloads, (std::vector<std::string>{"job-n:1", "job-n:2", "job-n:3"}));
}

TEST_F(PostgresStoreTest, ReconnectsAfterTheServerClosedItsConnections) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  // Fill the pool with several connections, then have the server close all of them.
  CheckConcurrentUpdates({store_.get()}, id, /*threads=*/4, /*per_thread=*/5);
  database_->TerminateConnections();
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->last_sequence(), 21);
  absl::StatusOr<v1::Job> updated = store_->UpdateJob(*job, MakeEvent("progress", v1::JOB_STATE_RUNNING));
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->last_sequence(), 22);
}

TEST_F(PostgresStoreTest, UnreachableDatabaseIsUnavailableUntilItComesBack) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  database_->Admin(absl::StrCat("ALTER DATABASE ", database_->name(), " ALLOW_CONNECTIONS false"));
  database_->TerminateConnections();
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  ASSERT_FALSE(job.ok());
  EXPECT_EQ(job.status().code(), absl::StatusCode::kUnavailable) << job.status();
  EXPECT_NE(job.status().message().find("not currently accepting connections"), absl::string_view::npos)
      << job.status();
  EXPECT_EQ(store_->NewId("job").status().code(), absl::StatusCode::kUnavailable);

  database_->Admin(absl::StrCat("ALTER DATABASE ", database_->name(), " ALLOW_CONNECTIONS true"));
  job = store_->GetJob(id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(*store_->NewId("job"), "job-000002");  // the failed NewId issued nothing
}

TEST_F(PostgresStoreTest, ServerErrorsAreInternalWithTheServerMessage) {
  database_->Query("DROP TABLE models");
  absl::StatusOr<v1::Model> model = store_->GetModel("model-1");
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInternal) << model.status();
  EXPECT_NE(model.status().message().find("relation \"models\" does not exist"), absl::string_view::npos)
      << model.status();
  EXPECT_EQ(model.status().message().rfind("postgres: reading model model-1: ", 0), 0u) << model.status();
  // The connection is still good for the next call.
  EXPECT_TRUE(store_->NewId("job").ok());
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: replicas (claims, leases, fencing, takeover, cancel requests, notifications)

class PostgresStoreReplicaTest : public PostgresStoreTest {
 protected:
  // Another store on the same database acting for replica `id`.
  std::unique_ptr<PostgresStore> Replica(const std::string& id) {
    PostgresStoreOptions options;
    options.replica_id = id;
    absl::StatusOr<std::unique_ptr<PostgresStore>> store = PostgresStore::Open(database_->url(), options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }
  std::string Column(const std::string& column, const std::string& id) {
    return database_->Query(absl::StrCat("SELECT ", column, " FROM jobs WHERE id = '", id, "'"));
  }
  // Stores `state` with an event through `store` (the job as `store` reads it).
  absl::StatusOr<v1::Job> Move(Store& store, const std::string& id, JobState state, const std::string& kind) {
    absl::StatusOr<v1::Job> job = store.GetJob(id);
    if (!job.ok()) return job.status();
    job->set_state(state);
    return store.UpdateJob(*job, MakeEvent(kind, state));
  }
};

TEST_F(PostgresStoreReplicaTest, ReplicaMethodsNeedAWellFormedReplicaId) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  EXPECT_EQ(store_->ClaimJob(id, absl::Seconds(5)).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(store_->RenewLeases(absl::Seconds(5)).status().code(), absl::StatusCode::kUnimplemented);
  for (const std::string& bad : std::vector<std::string>{"has space", "slash/y", std::string(64, 'r')}) {
    PostgresStoreOptions options;
    options.replica_id = bad;
    absl::StatusOr<std::unique_ptr<PostgresStore>> store = PostgresStore::Open(database_->url(), options);
    ASSERT_FALSE(store.ok()) << bad;
    EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument) << store.status();
    EXPECT_NE(store.status().message().find("replica_id"), absl::string_view::npos) << store.status();
  }
  std::unique_ptr<PostgresStore> r1 = Replica("host-1.r_1");
  ASSERT_NE(r1, nullptr);
  EXPECT_EQ(r1->replica_id(), "host-1.r_1");
  EXPECT_EQ(r1->ClaimJob(id, absl::ZeroDuration()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PostgresStoreReplicaTest, ExactlyOneOfRacingReplicasClaimsAQueuedJob) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  constexpr int kReplicas = 4;
  std::vector<std::unique_ptr<PostgresStore>> replicas;
  for (int r = 0; r < kReplicas; ++r) replicas.push_back(Replica(absl::StrCat("r", r)));
  std::vector<absl::StatusOr<JobClaim>> results(kReplicas, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < kReplicas; ++r) {
    threads.emplace_back([&, r] { results[r] = replicas[r]->ClaimJob(id, absl::Seconds(60)); });
  }
  for (std::thread& thread : threads) thread.join();
  int winner = -1;
  for (int r = 0; r < kReplicas; ++r) {
    if (results[r].ok()) {
      EXPECT_EQ(winner, -1) << "two replicas claimed " << id;
      winner = r;
      EXPECT_EQ(results[r]->job.id(), id);
      EXPECT_FALSE(results[r]->cancel_requested);
    }
  }
  ASSERT_NE(winner, -1);
  const std::string owner = absl::StrCat("r", winner);
  for (int r = 0; r < kReplicas; ++r) {
    if (r == winner) continue;
    EXPECT_EQ(results[r].status().code(), absl::StatusCode::kAborted) << results[r].status();
    EXPECT_NE(results[r].status().message().find("claimed by replica " + owner), absl::string_view::npos)
        << results[r].status();
  }
  EXPECT_EQ(Column("owner", id), owner);
  EXPECT_EQ(Column("lease_expires_at > now() + interval '30 seconds'", id), "t");
  EXPECT_TRUE(replicas[winner]->ClaimJob(id, absl::Seconds(60)).ok());  // its own again: renewed

  ASSERT_TRUE(Move(*replicas[winner], id, v1::JOB_STATE_RUNNING, "started").ok());
  const absl::StatusOr<JobClaim> running = replicas[(winner + 1) % kReplicas]->ClaimJob(id, absl::Seconds(60));
  EXPECT_EQ(running.status().code(), absl::StatusCode::kFailedPrecondition) << running.status();
  EXPECT_NE(running.status().message().find("JOB_STATE_RUNNING, not queued"), absl::string_view::npos)
      << running.status();
  EXPECT_EQ(replicas[0]->ClaimJob("job-none", absl::Seconds(60)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(PostgresStoreReplicaTest, LeasesExpireUnlessRenewedAndClaimsCanBeReleased) {
  std::unique_ptr<PostgresStore> r1 = Replica("r1");
  std::unique_ptr<PostgresStore> r2 = Replica("r2");
  const std::string lapsed = AddJob(v1::JOB_STATE_QUEUED);
  const std::string renewed = AddJob(v1::JOB_STATE_QUEUED);
  ASSERT_TRUE(r1->ClaimJob(lapsed, absl::Milliseconds(1)).ok());
  ASSERT_TRUE(r1->ClaimJob(renewed, absl::Milliseconds(1)).ok());
  absl::SleepFor(absl::Milliseconds(50));  // both leases are over by the database's clock
  // A renewal extends even an expired lease that no one took over.
  ASSERT_TRUE(r1->ClaimJob(renewed, absl::Milliseconds(1)).ok());
  absl::StatusOr<std::vector<JobLease>> leases = r1->RenewLeases(absl::Seconds(60));
  ASSERT_TRUE(leases.ok()) << leases.status();
  ASSERT_EQ(leases->size(), 2u);
  EXPECT_EQ((*leases)[0].job_id, lapsed);  // oldest first
  EXPECT_EQ((*leases)[1].job_id, renewed);
  EXPECT_EQ((*leases)[1].state, v1::JOB_STATE_QUEUED);
  EXPECT_EQ(r2->ClaimJob(renewed, absl::Seconds(60)).status().code(), absl::StatusCode::kAborted);

  // Expired: the other replica may claim it, and the first one no longer owns it.
  ASSERT_TRUE(r1->ClaimJob(lapsed, absl::Milliseconds(1)).ok());
  absl::SleepFor(absl::Milliseconds(50));
  absl::StatusOr<JobClaim> taken = r2->ClaimJob(lapsed, absl::Seconds(60));
  ASSERT_TRUE(taken.ok()) << taken.status();
  leases = r1->RenewLeases(absl::Seconds(60));
  ASSERT_TRUE(leases.ok());
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_EQ((*leases)[0].job_id, renewed);
  EXPECT_EQ(r1->ReleaseJob(lapsed).code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(r2->ReleaseJob(lapsed).ok());
  EXPECT_EQ(Column("owner IS NULL AND lease_expires_at IS NULL", lapsed), "t");
  EXPECT_TRUE(r2->RenewLeases(absl::Seconds(60))->empty());
  EXPECT_EQ(r2->ReleaseJob("job-none").code(), absl::StatusCode::kNotFound);
}

TEST_F(PostgresStoreReplicaTest, OnlyTheOwnerWritesAJobAndNeverFromAStaleRead) {
  std::unique_ptr<PostgresStore> r1 = Replica("r1");
  std::unique_ptr<PostgresStore> r2 = Replica("r2");
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  const v1::Job queued = *r2->GetJob(id);
  ASSERT_TRUE(r1->ClaimJob(id, absl::Seconds(60)).ok());

  // Another replica cannot write it, with or without an event.
  v1::Job clobber = queued;
  clobber.set_state(v1::JOB_STATE_CANCELLED);
  absl::StatusOr<v1::Job> refused = r2->UpdateJob(clobber, MakeEvent("cancelled", v1::JOB_STATE_CANCELLED));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("owned by replica r1"), absl::string_view::npos) << refused.status();
  EXPECT_EQ(r2->SaveJob(clobber).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r1->GetJob(id)->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(r1->GetJob(id)->last_sequence(), 1);

  // The owner can, from a current read; an outdated read is refused.
  absl::StatusOr<v1::Job> started = Move(*r1, id, v1::JOB_STATE_RUNNING, "started");
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ(started->last_sequence(), 2);
  EXPECT_EQ(Column("owner", id), "r1");  // RUNNING keeps the owner
  v1::Job stale = queued;                // last_sequence 1
  stale.set_state(v1::JOB_STATE_RUNNING);
  absl::StatusOr<v1::Job> outdated = r1->UpdateJob(stale, MakeEvent("progress", v1::JOB_STATE_RUNNING));
  EXPECT_EQ(outdated.status().code(), absl::StatusCode::kAborted) << outdated.status();
  EXPECT_EQ(r1->SaveJob(stale).code(), absl::StatusCode::kAborted);
  v1::Job current = *started;
  current.mutable_progress()->set_step(7);
  ASSERT_TRUE(r1->SaveJob(current).ok());
  EXPECT_EQ(r2->GetJob(id)->progress().step(), 7);

  // Requeueing releases the job; then a current write from anyone is fine again.
  ASSERT_TRUE(Move(*r1, id, v1::JOB_STATE_QUEUED, "requeued").ok());
  EXPECT_EQ(Column("owner IS NULL AND lease_expires_at IS NULL", id), "t");
  ASSERT_TRUE(r2->ClaimJob(id, absl::Seconds(60)).ok());
  ASSERT_TRUE(Move(*r2, id, v1::JOB_STATE_RUNNING, "started").ok());
  EXPECT_EQ(Move(*r1, id, v1::JOB_STATE_RUNNING, "progress").status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Move(*r2, id, v1::JOB_STATE_SUCCEEDED, "succeeded").ok());
  EXPECT_EQ(Column("owner IS NULL", id), "t");
  EXPECT_EQ(r1->GetJob(id)->last_sequence(), 5);  // queued, started, requeued, started, succeeded
}

TEST_F(PostgresStoreReplicaTest, ExactlyOneReplicaTakesOverEachJobWhoseLeaseExpired) {
  std::unique_ptr<PostgresStore> dead = Replica("dead");
  std::unique_ptr<PostgresStore> alive = Replica("alive");
  const std::string lapsed = AddJob(v1::JOB_STATE_QUEUED);
  const std::string held = AddJob(v1::JOB_STATE_QUEUED);
  const std::string cancelling = AddJob(v1::JOB_STATE_QUEUED);
  const std::string ownerless = AddJob(v1::JOB_STATE_RUNNING);  // left by a slimd without replicas
  const std::string waiting = AddJob(v1::JOB_STATE_QUEUED);     // claimed, lapsed, but QUEUED
  for (const std::string& id : {lapsed, cancelling, waiting}) ASSERT_TRUE(dead->ClaimJob(id, absl::Seconds(60)).ok());
  ASSERT_TRUE(alive->ClaimJob(held, absl::Seconds(60)).ok());
  ASSERT_TRUE(Move(*dead, lapsed, v1::JOB_STATE_RUNNING, "started").ok());
  ASSERT_TRUE(Move(*dead, cancelling, v1::JOB_STATE_CANCELLING, "cancelling").ok());
  ASSERT_TRUE(Move(*alive, held, v1::JOB_STATE_RUNNING, "started").ok());
  ASSERT_TRUE(alive->RequestCancel(lapsed).ok());
  ASSERT_TRUE(dead->RenewLeases(absl::Milliseconds(1)).ok());  // its last renewal
  absl::SleepFor(absl::Milliseconds(50));

  constexpr int kTakers = 3;
  std::vector<std::unique_ptr<PostgresStore>> takers;
  for (int t = 0; t < kTakers; ++t) takers.push_back(Replica(absl::StrCat("taker", t)));
  std::vector<absl::StatusOr<std::vector<JobClaim>>> results(kTakers, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int t = 0; t < kTakers; ++t) {
    threads.emplace_back([&, t] { results[t] = takers[t]->TakeOverExpiredJobs(absl::Seconds(60)); });
  }
  for (std::thread& thread : threads) thread.join();
  std::map<std::string, int> taken;  // job → how many takers got it
  std::map<std::string, JobClaim> claims;
  std::map<std::string, std::string> taker_of;
  for (int t = 0; t < kTakers; ++t) {
    ASSERT_TRUE(results[t].ok()) << results[t].status();
    for (const JobClaim& claim : *results[t]) {
      ++taken[claim.job.id()];
      claims[claim.job.id()] = claim;
      taker_of[claim.job.id()] = absl::StrCat("taker", t);
    }
  }
  EXPECT_EQ(taken, (std::map<std::string, int>{{lapsed, 1}, {cancelling, 1}, {ownerless, 1}}));
  EXPECT_EQ(claims[lapsed].previous_owner, "dead");
  EXPECT_EQ(claims[lapsed].job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(claims[lapsed].cancel_requested);
  EXPECT_EQ(claims[cancelling].job.state(), v1::JOB_STATE_CANCELLING);
  EXPECT_FALSE(claims[cancelling].cancel_requested);
  EXPECT_EQ(claims[ownerless].previous_owner, "");
  EXPECT_EQ(Column("owner", lapsed), taker_of[lapsed]);
  EXPECT_EQ(Column("owner", held), "alive");

  // The dead replica, back, finds it owns only the queued claim and may not write the others.
  absl::StatusOr<std::vector<JobLease>> leases = dead->RenewLeases(absl::Seconds(60));
  ASSERT_TRUE(leases.ok());
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_EQ((*leases)[0].job_id, waiting);
  EXPECT_EQ(Move(*dead, lapsed, v1::JOB_STATE_RUNNING, "progress").status().code(),
            absl::StatusCode::kFailedPrecondition);
  // The taker requeues it: released, claimable by anyone.
  PostgresStore& taker = *takers[taker_of[lapsed].back() - '0'];
  ASSERT_TRUE(Move(taker, lapsed, v1::JOB_STATE_QUEUED, "requeued").ok());
  EXPECT_EQ(Column("owner IS NULL", lapsed), "t");
  EXPECT_TRUE(alive->TakeOverExpiredJobs(absl::Seconds(60))->empty());  // nothing left
}

TEST_F(PostgresStoreReplicaTest, CancelRequestsReachTheOwnerAndOutliveARequeue) {
  std::unique_ptr<PostgresStore> r1 = Replica("r1");
  std::unique_ptr<PostgresStore> r2 = Replica("r2");
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  absl::StatusOr<std::string> unowned = r2->RequestCancel(id);
  EXPECT_EQ(unowned.status().code(), absl::StatusCode::kFailedPrecondition) << unowned.status();
  EXPECT_NE(unowned.status().message().find("owned by no replica"), absl::string_view::npos) << unowned.status();

  ASSERT_TRUE(r1->ClaimJob(id, absl::Seconds(60)).ok());
  ASSERT_TRUE(Move(*r1, id, v1::JOB_STATE_RUNNING, "started").ok());
  EXPECT_FALSE((*r1->RenewLeases(absl::Seconds(60)))[0].cancel_requested);
  absl::StatusOr<std::string> owner = r2->RequestCancel(id);
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_EQ(*owner, "r1");
  absl::StatusOr<std::vector<JobLease>> leases = r1->RenewLeases(absl::Seconds(60));
  ASSERT_TRUE(leases.ok());
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_TRUE((*leases)[0].cancel_requested);
  EXPECT_EQ((*leases)[0].state, v1::JOB_STATE_RUNNING);

  // Requeued before acting on it (e.g. the owner shut down): the next owner sees it.
  ASSERT_TRUE(Move(*r1, id, v1::JOB_STATE_QUEUED, "requeued").ok());
  absl::StatusOr<JobClaim> claim = r2->ClaimJob(id, absl::Seconds(60));
  ASSERT_TRUE(claim.ok()) << claim.status();
  EXPECT_TRUE(claim->cancel_requested);
  ASSERT_TRUE(Move(*r2, id, v1::JOB_STATE_CANCELLED, "cancelled").ok());
  EXPECT_EQ(Column("cancel_requested", id), "f");
  EXPECT_EQ(Column("owner IS NULL", id), "t");
  absl::StatusOr<std::string> ended = r1->RequestCancel(id);
  EXPECT_EQ(ended.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(ended.status().message().find("it has ended"), absl::string_view::npos) << ended.status();
  EXPECT_EQ(r1->RequestCancel("job-none").status().code(), absl::StatusCode::kNotFound);
}

// Collects what a store's Listen delivers.
class Heard {
 public:
  std::function<void(const StoreNotification&)> Callback() {
    return [this](const StoreNotification& n) {
      absl::MutexLock lock(&mu_);
      heard_.push_back(n);
    };
  }
  // Waits up to 30 s for a notification matching `kind`, `job` and `sequence` (0 = any).
  bool WaitFor(StoreNotification::Kind kind, const std::string& job, int64_t sequence = 0) {
    absl::MutexLock lock(&mu_);
    auto found = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const StoreNotification& n : heard_) {
        if (n.kind == kind && n.job_id == job && (sequence == 0 || n.sequence == sequence)) return true;
      }
      return false;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&found), absl::Seconds(30));
  }
  int Count(StoreNotification::Kind kind, const std::string& job) {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const StoreNotification& h : heard_) n += h.kind == kind && h.job_id == job;
    return n;
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return heard_.size();
  }

 private:
  absl::Mutex mu_;
  std::vector<StoreNotification> heard_ ABSL_GUARDED_BY(mu_);
};

TEST_F(PostgresStoreReplicaTest, ListenHearsEveryReplicaAndResyncsAfterReconnecting) {
  std::unique_ptr<PostgresStore> listener = Replica("r1");
  std::unique_ptr<PostgresStore> writer = Replica("r2");
  Heard heard;
  ASSERT_TRUE(listener->Listen(heard.Callback()).ok());
  EXPECT_EQ(listener->Listen(heard.Callback()).code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(writer->CreateJob(MakeJob("job-l", v1::JOB_STATE_QUEUED), MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  EXPECT_TRUE(heard.WaitFor(StoreNotification::Kind::kEvent, "job-l", 1));
  EXPECT_TRUE(heard.WaitFor(StoreNotification::Kind::kQueued, "job-l"));
  ASSERT_TRUE(writer->ClaimJob("job-l", absl::Seconds(60)).ok());
  ASSERT_TRUE(Move(*writer, "job-l", v1::JOB_STATE_RUNNING, "started").ok());
  EXPECT_TRUE(heard.WaitFor(StoreNotification::Kind::kEvent, "job-l", 2));
  ASSERT_TRUE(listener->RequestCancel("job-l").ok());
  EXPECT_TRUE(heard.WaitFor(StoreNotification::Kind::kCancelRequested, "job-l"));
  EXPECT_EQ(heard.Count(StoreNotification::Kind::kQueued, "job-l"), 1);  // RUNNING is not claimable

  // The server drops every connection: the listener reconnects, says so, and hears on.
  database_->TerminateConnections();
  EXPECT_TRUE(heard.WaitFor(StoreNotification::Kind::kResync, ""));
  ASSERT_TRUE(Move(*writer, "job-l", v1::JOB_STATE_QUEUED, "requeued").ok());
  EXPECT_TRUE(heard.WaitFor(StoreNotification::Kind::kEvent, "job-l", 3));
  EXPECT_TRUE(heard.WaitFor(StoreNotification::Kind::kQueued, "job-l"));
  EXPECT_EQ(heard.Count(StoreNotification::Kind::kQueued, "job-l"), 2);

  listener->StopListening();
  const size_t before = heard.size();
  ASSERT_TRUE(writer->ClaimJob("job-l", absl::Seconds(60)).ok());
  ASSERT_TRUE(Move(*writer, "job-l", v1::JOB_STATE_RUNNING, "started").ok());
  // No callback runs after StopListening returned (a later one would land here).
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(heard.size(), before);
}

TEST_F(PostgresStoreReplicaTest, UnreachableServerFailsListen) {
  PostgresStoreOptions options;
  options.replica_id = "r1";
  absl::StatusOr<std::unique_ptr<PostgresStore>> store = PostgresStore::Open(database_->url(), options);
  ASSERT_TRUE(store.ok());
  database_->Admin(absl::StrCat("ALTER DATABASE ", database_->name(), " ALLOW_CONNECTIONS false"));
  Heard heard;
  const absl::Status listening = (*store)->Listen(heard.Callback());
  database_->Admin(absl::StrCat("ALTER DATABASE ", database_->name(), " ALLOW_CONNECTIONS true"));
  EXPECT_EQ(listening.code(), absl::StatusCode::kUnavailable) << listening;
  EXPECT_TRUE((*store)->Listen(heard.Callback()).ok());  // nothing left running from the failure
}

// Replicas publish their devices for each other's admission; one that stopped publishing drops
// out after `max_age`.
TEST_F(PostgresStoreReplicaTest, ReplicasPublishTheirDevices) {
  std::unique_ptr<PostgresStore> r1 = Replica("r1");
  std::unique_ptr<PostgresStore> r2 = Replica("r2");
  ASSERT_NE(r1, nullptr);
  ASSERT_NE(r2, nullptr);
  const auto devices = [](int count) {
    v1::ListDevicesResponse response;
    for (int i = 0; i < count; ++i) {
      v1::Device* d = response.add_devices();
      d->set_name(absl::StrCat("cpu:", i));
      d->set_kind("cpu");
      d->set_capacity_bytes(int64_t{16} << 20);
    }
    return response;
  };
  ASSERT_TRUE(r1->PublishDevices(devices(1)).ok());
  ASSERT_TRUE(r2->PublishDevices(devices(3)).ok());
  ASSERT_TRUE(r2->PublishDevices(devices(2)).ok());  // the newest replaces the older
  absl::StatusOr<std::vector<v1::ListDevicesResponse>> fleet = r1->FleetDevices(absl::Seconds(60));
  ASSERT_TRUE(fleet.ok()) << fleet.status();
  ASSERT_EQ(fleet->size(), 2u);
  EXPECT_EQ((*fleet)[0].devices_size(), 1);  // r1
  EXPECT_EQ((*fleet)[1].devices_size(), 2);  // r2
  database_->Query("UPDATE replicas SET seen_at = now() - interval '1 hour' WHERE id = 'r2'");
  fleet = r1->FleetDevices(absl::Seconds(60));
  ASSERT_TRUE(fleet.ok()) << fleet.status();
  ASSERT_EQ(fleet->size(), 1u) << "r2 stopped publishing";
  EXPECT_EQ((*fleet)[0].devices_size(), 1);
}

TEST_F(PostgresStoreReplicaTest, UpgradesAVersion1Database) {
  const std::string id = AddJob(v1::JOB_STATE_QUEUED);
  v1::Job owned = MakeJob("job-alice", v1::JOB_STATE_SUCCEEDED);
  owned.set_tenant("alice");
  ASSERT_TRUE(store_->CreateJob(owned, MakeEvent("queued", v1::JOB_STATE_QUEUED)).ok());
  v1::Model model;
  model.set_id("model-alice");
  model.set_tenant("alice");
  ASSERT_TRUE(store_->PutModel(model).ok());
  store_.reset();
  // What version 1 had: no cancel requests, no tenant columns, no request ids.
  database_->Query("DROP INDEX jobs_by_owner");
  database_->Query("ALTER TABLE jobs DROP COLUMN request_id");
  database_->Query("ALTER TABLE jobs DROP COLUMN cancel_requested");
  for (const char* table : {"jobs", "datasets", "models"}) {
    database_->Query(absl::StrCat("ALTER TABLE ", table, " DROP COLUMN tenant"));
  }
  database_->Query("DROP TABLE replicas");
  database_->Query("UPDATE schema_version SET version = 1");
  std::unique_ptr<PostgresStore> r1 = Replica("r1");
  ASSERT_NE(r1, nullptr);
  EXPECT_EQ(database_->Query("SELECT version FROM schema_version"), "4");
  // The tenant columns were filled from the records.
  absl::StatusOr<Page<v1::Job>> alices = r1->ListJobs({}, 10, "", ListScope::Of("alice"));
  ASSERT_TRUE(alices.ok()) << alices.status();
  ASSERT_EQ(alices->items.size(), 1u);
  EXPECT_EQ(alices->items[0].id(), "job-alice");
  EXPECT_EQ(r1->ListModels(10, "", ListScope::Of("alice"))->items.size(), 1u);
  EXPECT_EQ(r1->ListModels(10, "", ListScope::Of("bob"))->items.size(), 0u);
  EXPECT_EQ(Column("cancel_requested", id), "f");
  ASSERT_TRUE(r1->ClaimJob(id, absl::Seconds(60)).ok());
  EXPECT_TRUE(Replica("r2")->RequestCancel(id).ok());
  EXPECT_EQ(Column("cancel_requested", id), "t");
}

}  // namespace
}  // namespace slim::server
