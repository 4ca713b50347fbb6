import Configuration
import Foundation
import Hummingbird
import I2VApp
import I2VCore

@main
struct I2VServer {
    static let usage = """
        usage: i2v-server [serve | api | worker]

          serve   the API, the queue and the inference workers in one process tree (default)
          api     the HTTP API only: no model, no worker; several share one PostgreSQL queue
          worker  inference workers only, one per device, plus /health, /ready, /metrics and /models
                  on I2V_PORT; several share one PostgreSQL queue

        api and worker need I2V_DATABASE_URL=postgres://... and a data dir (I2V_DATA_DIR) all nodes share.

        Configuration is read from I2V_* environment variables; see README.md.
        """

    static func main() async throws {
        let command = CommandLine.arguments.dropFirst().first ?? "serve"
        if ["-h", "--help", "help"].contains(command) {
            print(usage)
            return
        }
        guard let role = NodeRole(rawValue: command) else {
            FileHandle.standardError.write(Data("unknown command \(command)\n\n\(usage)\n".utf8))
            exit(2)
        }
        let reader = ConfigReader(providers: [EnvironmentVariablesProvider()])
        do {
            let app = try await buildApplication(reader: reader, role: role)
            try await app.runService()
        } catch let problem as ConfigurationProblem {
            FileHandle.standardError.write(Data("i2v-server: \(problem)\n".utf8))
            exit(1)
        }
    }
}
