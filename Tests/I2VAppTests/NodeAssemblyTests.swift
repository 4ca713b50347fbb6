import Foundation
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode

/// What each role's node is built from, and the order its parts stop in: the API first, so no new work
/// arrives; upkeep; the dispatcher while the workers can still finish or hand back their jobs; the workers;
/// and the store's connections last, because every stage before them records through it.
@Suite struct NodeAssemblyTests {
    @Test func aSingleNodeStopsItsAPIBeforeItsDispatcherAndItsWorkersLast() async throws {
        let directory = try TemporaryDirectory()
        // Real supervised workers, built and never started: two CPU devices and a checkpoint path nothing reads.
        let parts = try await buildNode(
            configuration: testConfiguration(
                dataDir: directory.url, ["i2v.modelPath": .init(stringLiteral: directory.url.path), "i2v.devices": "cpu,cpu"]
            ),
            overrides: AppOverrides(catalog: ModelCatalog(models: [ServedModel(id: "m", nativeArea: 15_360)]))
        )
        // SQLite keeps no connection service of its own; the file closes with the store.
        #expect(parts.shutdownOrder == [.api, .upkeep, .dispatch, .workers])
        let stage = Dictionary(uniqueKeysWithValues: parts.stages.map { ($0.stage, $0.services) })
        #expect(stage[.dispatch]?.contains { $0 is Dispatcher } == true)
        #expect(stage[.dispatch]?.contains { $0 is NodeHeartbeat } == true)
        #expect(stage[.upkeep]?.contains { $0 is LeaseReaper } == true)
        #expect(stage[.upkeep]?.contains { $0 is ResultSweeper } == true)
        #expect(stage[.workers]?.count == 2 && stage[.workers]?.allSatisfy { $0 is WorkerSupervisor } == true)
        // Start order is the reverse: nothing is dispatched before its workers exist.
        let dispatcher = try #require(parts.services.firstIndex { $0 is Dispatcher })
        let lastWorker = try #require(parts.services.lastIndex { $0 is WorkerSupervisor })
        #expect(dispatcher > lastWorker)
    }

    @Test func anAPINodeRunsNoWorkersAndClosesItsDatabaseLast() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let directory = try TemporaryDirectory()
            let parts = try await buildNode(
                configuration: testConfiguration(
                    dataDir: directory.url, ["i2v.databaseUrl": .init(stringLiteral: try TestCluster.url(database: endpoint.database))]
                ),
                role: .api
            )
            #expect(parts.pool == nil)
            #expect(parts.shutdownOrder == [.api, .upkeep, .store])
            #expect(!parts.services.contains { $0 is Dispatcher || $0 is NodeHeartbeat || $0 is WorkerSupervisor })
        }
    }
}
