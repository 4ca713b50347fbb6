import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The node roles, in process: what each one serves, what it refuses, and an API node's answers while the
/// database is away. (Several nodes as separate processes: MultiNodeTests.)
@Suite struct RoleTests {
    @Test(arguments: [NodeRole.api, .worker])
    func theSharedRolesRefuseSQLite(_ role: NodeRole) async throws {
        let directory = try TemporaryDirectory()
        do {
            _ = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), role: role)
            Issue.record("i2v-server \(role.rawValue) started on SQLite")
        } catch let problem as ConfigurationProblem {
            #expect(problem.description.contains("I2V_DATABASE_URL=postgres://"))
            #expect(problem.description.contains("i2v-server \(role.rawValue)"))
        }
    }

    /// A worker node answers its operators (/health, /ready with its workers and their tasks, /metrics)
    /// and nothing of the API; an API node is ready without any worker and takes submits for the queue.
    @Test func aWorkerNodeServesOperationsOnlyAndAnAPINodeQueues() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let url = try TestCluster.url(database: endpoint.database)
            let directory = try TemporaryDirectory()
            let api = try await makeTestApp(
                dataDir: directory.url, worker: FakeWorker(), role: .api,
                ["i2v.databaseUrl": .init(stringLiteral: url), "i2v.nodeId": "front-1"]
            )
            try await withImageServer { base in
                // No worker node has registered: the API node is not ready and knows no model to queue for.
                try await api.test(.router) { client in
                    let ready = try await client.execute(uri: "/ready", method: .get)
                    #expect(ready.status == .serviceUnavailable)
                    #expect(ready.reason().contains("no live worker node"), "\(ready.reason())")
                    #expect((try await client.execute(uri: "/models", method: .get).jsonObject()["models"] as? [Any])?.isEmpty == true)
                    let refused = try await client.post(
                        "/video/submit",
                        json: #"{"image_url":"\#(base)/image.png","prompt":"A dancing cat in the style of Van Gogh"}"#
                    )
                    #expect(refused.status == .serviceUnavailable)
                    #expect(refused.reason().contains("no worker node has registered"), "\(refused.reason())")
                    // OpenAI's API says the same in its own shape, with a code the SDKs can branch on.
                    let refusedV1 = try await client.createVideo(json: [
                        "prompt": "A dancing cat in the style of Van Gogh", "input_reference": ["image_url": "\(base)/image.png"],
                    ])
                    #expect(refusedV1.status == .serviceUnavailable)
                    #expect(refusedV1.headers[.retryAfter] != nil)
                    let error = try refusedV1.jsonObject()["error"] as? [String: Any]
                    #expect(error?["code"] as? String == "no_worker_node", "\(String(describing: error))")
                }
            }

            let worker = try await makeTestApp(
                dataDir: directory.url, worker: FakeWorker(), role: .worker,
                ["i2v.databaseUrl": .init(stringLiteral: url), "i2v.nodeId": "gpu-box-1"]
            )
            try await worker.test(.router) { client in
                #expect(try await client.execute(uri: "/health", method: .get).status == .ok)
                let ready = try await client.execute(uri: "/ready", method: .get)
                #expect(ready.status == .ok)
                let body = try ready.jsonObject()
                #expect(body["role"] as? String == "worker" && body["node"] as? String == "gpu-box-1")
                #expect((body["workers"] as? [[String: Any]])?.first?["tasks"] as? [String] == [])
                #expect(try await client.execute(uri: "/metrics", method: .get).status == .ok)
                #expect(try await client.post("/video/submit", json: "{}").status == .notFound)
                #expect(try await client.execute(uri: "/docs", method: .get).status == .notFound)
                // Its heartbeat announces it, with its model and slots, in the shared store.
                let announced = await eventually("the worker node in the registry") {
                    let nodes = (try? await withPostgresStore(endpoint) { try await $0.workerNodes() }) ?? []
                    return nodes.contains { $0.id == "gpu-box-1" && $0.models.map(\.id) == ["test-model"] && $0.slots == 2 }
                }
                #expect(announced)
            }
            // A worker node that stops cleanly leaves the registry at once.
            #expect(try await withPostgresStore(endpoint) { try await $0.workerNodes() }.isEmpty)

            // A node whose last heartbeat is older than a lease is gone; a fresh one makes the API node ready.
            try await withPostgresStore(endpoint) { store in
                try await store.recordHeartbeat(Self.node("gpu-gone", heartbeatAt: Date().addingTimeInterval(-120)))
            }
            // A second run of an app needs a new one: its store's connection pool runs once.
            let apiAgain = try await makeTestApp(
                dataDir: directory.url, worker: FakeWorker(), role: .api,
                ["i2v.databaseUrl": .init(stringLiteral: url), "i2v.nodeId": "front-1"]
            )
            try await withImageServer { base in
                try await apiAgain.test(.router) { client in
                    #expect(try await client.execute(uri: "/ready", method: .get).status == .serviceUnavailable)
                    try await withPostgresStore(endpoint) { try await $0.recordHeartbeat(Self.node("gpu-box-2", heartbeatAt: Date())) }
                    // The API node reads the registry through a cache of about a second, so the new node shows
                    // within that.
                    var ready = try await client.execute(uri: "/ready", method: .get)
                    _ = await eventually("the API node ready after a heartbeat") {
                        ready = (try? await client.execute(uri: "/ready", method: .get)) ?? ready
                        return ready.status == .ok
                    }
                    #expect(ready.status == .ok)
                    let body = try ready.jsonObject()
                    #expect(body["role"] as? String == "api" && body["node"] as? String == "front-1" && body["workers"] == nil)
                    #expect((body["worker_nodes"] as? [[String: Any]])?.map { $0["id"] as? String } == ["gpu-box-2"])
                    let models = try await client.execute(uri: "/models", method: .get).jsonObject()["models"] as? [[String: Any]]
                    #expect(models?.map { $0["id"] as? String } == ["registered-model"])
                    let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","model":"registered-model""#)
                    // No worker node runs here: the task waits in the shared queue.
                    #expect(try await client.status(id)["status"] as? String == "InQueue")
                }
            }
            let queued = try await withPostgresStore(endpoint) { try await $0.counts() }
            #expect(queued == QueueCounts(queued: 1, running: 0))
        }
    }

    private static func node(_ id: String, heartbeatAt: Date) -> WorkerNode {
        WorkerNode(
            id: id, models: [ServedModel(id: "registered-model", nativeArea: 15_360)], slots: 1, running: 0,
            startedAt: heartbeatAt, heartbeatAt: heartbeatAt
        )
    }

    /// While the database is away a submit is refused with 503 and a reason (nothing is queued, nothing
    /// crashes); once it is back the same submit is accepted and runs.
    @Test func submitsAnswer503WhileTheDatabaseIsAway() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let url = try TestCluster.url(database: endpoint.database)
            let directory = try TemporaryDirectory()
            let app = try await makeTestApp(
                dataDir: directory.url, worker: FakeWorker(),
                // The timeout under test gets its own setting (the default is 10 s), long enough for the calls before
                // the outage on a busy machine.
                ["i2v.databaseUrl": .init(stringLiteral: url), "i2v.databaseTimeoutSeconds": 15]
            )
            try await withImageServer { base in
                try await app.test(.router) { client in
                    try await setConnections(allowed: false, endpoint)
                    let refused = try await client.post(
                        "/video/submit",
                        json: #"{"image_url":"\#(base)/image.png","prompt":"A dancing cat in the style of Van Gogh"}"#
                    )
                    #expect(refused.status == .serviceUnavailable)
                    #expect(refused.headers[.retryAfter] != nil)
                    let reason = (try refused.jsonObject()["detail"] as? [String: Any])?["reason"] as? String ?? ""
                    #expect(reason.contains("task database is unavailable"), "\(reason)")
                    #expect(try await client.execute(uri: "/ready", method: .get).status == .serviceUnavailable)
                    #expect(try await client.execute(uri: "/health", method: .get).status == .ok)

                    try await setConnections(allowed: true, endpoint)
                    // The connection pool retries with a growing pause (up to a minute) while the database is
                    // away, so coming back can take that long on a busy machine.
                    let back = await eventually("the database answering the service again", timeout: .seconds(300)) {
                        (try? await client.execute(uri: "/ready", method: .get))?.status == .ok
                    }
                    try #require(back)
                    let id = try await client.submit(imageURL: "\(base)/image.png")
                    #expect(try await client.waitFor(id, status: "Succeed")["status"] as? String == "Succeed")
                }
            }
        }
    }

    /// A job that ends while the database is away is neither lost nor run again: the node keeps its result
    /// and records it once the database is back.
    @Test func aJobThatEndsWhileTheDatabaseIsAwayIsRecordedWhenItIsBack() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let url = try TestCluster.url(database: endpoint.database)
            let directory = try TemporaryDirectory()
            let worker = FakeWorker()
            await worker.setHoldsAfterLastStep(true)
            let app = try await makeTestApp(
                dataDir: directory.url, worker: worker,
                ["i2v.databaseUrl": .init(stringLiteral: url), "i2v.databaseTimeoutSeconds": 15]
            )
            try await withImageServer { base in
                try await app.test(.router) { client in
                    let id = try await client.submit(imageURL: "\(base)/image.png")
                    let parked = await eventually("the job reaching its last step") { await worker.heldAfterLastStep.contains(id) }
                    try #require(parked)
                    try await setConnections(allowed: false, endpoint)
                    await worker.releaseHeldJobs()
                    // The job has ended; its end cannot be recorded yet.
                    let ended = await eventually("the worker finishing the job") { await worker.running.isEmpty }
                    try #require(ended)
                    try await setConnections(allowed: true, endpoint)
                    // The connection pool reconnects after a growing pause (up to a minute): reads answer 503 until then.
                    let back = await eventually("the database answering the service again", timeout: .seconds(300)) {
                        (try? await client.execute(uri: "/ready", method: .get))?.status == .ok
                    }
                    try #require(back)
                    let done = try await client.waitFor(id, status: "Succeed", timeout: .seconds(300))
                    #expect(done["status"] as? String == "Succeed", "\(done)")
                    #expect(await worker.started == [id], "the task ran once")
                }
            }
        }
    }
}
