import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import I2VApp
@testable import I2VCore

/// Several models on one PostgreSQL queue: each worker node serves one model and claims only its tasks, a
/// model's long queue never holds up another model, and a model of the table that no live node serves is a
/// 503 at submit (an unknown model stays a 422).
@Suite struct MixedFleetTests {
    static let slowModel = "wan2.1-i2v-14b-480p-demo"
    static let fastModel = "wan2.2-ti2v-5b-demo"

    @Test func eachModelRunsOnlyOnItsNodesAndNoneStarves() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let url = try TestCluster.url(database: endpoint.database)
            let directory = try TemporaryDirectory()
            func node(_ id: String, _ role: NodeRole, _ worker: FakeWorker, model: String) async throws -> some ApplicationProtocol {
                try await makeTestApp(
                    dataDir: directory.url, worker: worker, role: role, model: model,
                    ["i2v.databaseUrl": .init(stringLiteral: url), "i2v.nodeId": .init(stringLiteral: id), "i2v.maxQueued": 50]
                )
            }
            // The slow model's jobs park after their last step until released, so its queue cannot drain
            // before the fast model's jobs are done, however busy the machine is.
            let slow = FakeWorker(stepDuration: .milliseconds(20))
            await slow.setHoldsAfterLastStep(true)
            let fast = FakeWorker()
            let api = try await node("front", .api, FakeWorker(), model: "unused")
            let slowNode = try await node("gpu-slow", .worker, slow, model: Self.slowModel)
            let fastNode = try await node("gpu-fast", .worker, fast, model: Self.fastModel)
            try await withImageServer { base in
                try await api.test(.router) { client in
                    try await slowNode.test(.router) { _ in
                        try await fastNode.test(.router) { _ in
                            let both = await eventually("both worker nodes' models on the API node") {
                                let models = (try? await client.execute(uri: "/models", method: .get).jsonObject()["models"] as? [[String: Any]]) ?? []
                                return Set(models.compactMap { $0["id"] as? String }) == [Self.slowModel, Self.fastModel]
                            }
                            try #require(both)
                            // A long queue for the slow model first, then the fast model's jobs behind it.
                            var slowIDs: [String] = []
                            for _ in 0..<6 {
                                slowIDs.append(try await client.submit(imageURL: "\(base)/image.png", extra: #","model":"\#(Self.slowModel)""#))
                            }
                            var fastIDs: [String] = []
                            for _ in 0..<3 {
                                fastIDs.append(try await client.submit(imageURL: "\(base)/image.png", extra: #","model":"\#(Self.fastModel)""#))
                            }
                            // Positions count only the tasks of the same model.
                            let lastFast = try await client.status(fastIDs[2])
                            if lastFast["status"] as? String == "InQueue" {
                                #expect((lastFast["queue_position"] as? Int ?? 99) <= 3, "\(lastFast)")
                            }
                            for id in fastIDs {
                                #expect(try await client.waitFor(id, status: "Succeed")["status"] as? String == "Succeed")
                            }
                            // The fast model's jobs were done while the slow model's queue was still draining.
                            var slowStatuses: [String] = []
                            for id in slowIDs { slowStatuses.append(try await client.status(id)["status"] as? String ?? "") }
                            #expect(slowStatuses.allSatisfy { $0 != "Succeed" }, "a held slow job finished: \(slowStatuses)")
                            #expect(slowStatuses.contains("InQueue"), "the slow model's queue is still waiting: \(slowStatuses)")
                            await slow.setHoldsAfterLastStep(false)
                            await slow.releaseHeldJobs()
                            for id in slowIDs {
                                #expect(try await client.waitFor(id, status: "Succeed", timeout: .seconds(300))["status"] as? String == "Succeed")
                            }
                            #expect(Set(await slow.started) == Set(slowIDs))
                            #expect(Set(await fast.started) == Set(fastIDs))

                            // A model of the table with no live node: 503 with the reason, in both APIs.
                            let refused = try await client.post(
                                "/video/submit",
                                json:
                                    #"{"image_url":"\#(base)/image.png","prompt":"A dancing cat in the style of Van Gogh","model":"wan2.1-flf2v-14b-720p-demo"}"#
                            )
                            #expect(refused.status == .serviceUnavailable)
                            #expect(refused.reason().contains("no live worker serves model wan2.1-flf2v-14b-720p-demo"), "\(refused.reason())")
                            let refusedV1 = try await client.createVideo(json: [
                                "prompt": "A dancing cat in the style of Van Gogh", "model": "wan2.2-i2v-a14b",
                                "input_reference": ["image_url": "\(base)/image.png"],
                            ])
                            #expect(refusedV1.status == .serviceUnavailable)
                            #expect((try refusedV1.jsonObject()["error"] as? [String: Any])?["code"] as? String == "no_worker_node")
                            // A model nobody has heard of is the client's mistake.
                            let unknown = try await client.post(
                                "/video/submit",
                                json: #"{"image_url":"\#(base)/image.png","prompt":"A dancing cat in the style of Van Gogh","model":"no-such-model"}"#
                            )
                            #expect(unknown.status == .unprocessableContent)
                        }
                    }
                }
            }
        }
    }
}
