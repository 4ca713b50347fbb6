import Foundation
import GRDB
import I2VCore

extension SQLiteTaskStore {
    public func recordHeartbeat(_ node: WorkerNode) async throws {
        let models = try WorkerNodeColumns.encodeModels(node.models)
        try await database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO nodes (id, models, slots, running, free_memory_bytes, bytes_per_token, started_at, heartbeat_at, devices)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (id) DO UPDATE SET models = excluded.models, slots = excluded.slots,
                        running = excluded.running, free_memory_bytes = excluded.free_memory_bytes,
                        bytes_per_token = excluded.bytes_per_token, started_at = excluded.started_at,
                        heartbeat_at = excluded.heartbeat_at, devices = excluded.devices
                    """,
                arguments: [
                    node.id, models, node.slots, node.running, node.freeMemoryBytes, node.bytesPerToken,
                    node.startedAt.timeIntervalSince1970, node.heartbeatAt.timeIntervalSince1970,
                    WorkerNodeColumns.encodeDevices(node.devices),
                ]
            )
            try db.execute(
                sql: "DELETE FROM nodes WHERE heartbeat_at < ?",
                arguments: [node.heartbeatAt.timeIntervalSince1970 - WorkerNodeColumns.staleAfter]
            )
        }
    }

    public func workerNodes() async throws -> [WorkerNode] {
        try await database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM nodes ORDER BY heartbeat_at DESC, id").map { row in
                WorkerNode(
                    id: row["id"],
                    models: try WorkerNodeColumns.decodeModels(row["models"]),
                    slots: row["slots"],
                    running: row["running"],
                    freeMemoryBytes: row["free_memory_bytes"],
                    bytesPerToken: row["bytes_per_token"],
                    startedAt: Date(timeIntervalSince1970: row["started_at"]),
                    heartbeatAt: Date(timeIntervalSince1970: row["heartbeat_at"]),
                    devices: WorkerNodeColumns.decodeDevices(row["devices"])
                )
            }
        }
    }

    public func removeWorkerNode(id: String) async throws {
        try await database.write { db in
            try db.execute(sql: "DELETE FROM nodes WHERE id = ?", arguments: [id])
        }
    }
}
