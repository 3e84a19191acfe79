// Records/s of lib/csharp/DvicLog.cs writing 100-byte messages (bench/dvic_log_js_csharp.py builds and
// runs it: mcs -optimize -out:bench.exe lib/csharp/DvicLog.cs bench/dvic_log_cs_bench.cs).
// Usage: mono bench.exe RECORDS THREADS   (DVIC_LOG_DIR set). Prints {"records": N, "seconds": S}.

using System;
using System.Diagnostics;
using System.Globalization;
using System.Threading;
using DvicLog;

static class DvicLogCsBench
{
    static int Main(string[] args)
    {
        long records = args.Length > 0 ? long.Parse(args[0]) : 1000000;
        int threads = args.Length > 1 ? int.Parse(args[1]) : 1;
        string message = ("bench record with a plain ASCII message of exactly one hundred bytes: " + new string('x', 100)).Substring(0, 100);
        Logger log = Logger.Get("bench-cs");
        for (int i = 0; i < 2000; i++)
            log.Info(message); // let the JIT compile the write path first
        long perThread = records / threads;
        var start = new Barrier(threads + 1);
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            workers[t] = new Thread(() =>
            {
                start.SignalAndWait();
                for (long i = 0; i < perThread; i++)
                    log.Info(message);
            });
            workers[t].Start();
        }
        start.SignalAndWait();
        var watch = Stopwatch.StartNew();
        foreach (Thread w in workers)
            w.Join();
        double seconds = watch.Elapsed.TotalSeconds;
        Console.WriteLine("{\"records\": " + perThread * threads + ", \"seconds\": " + seconds.ToString("0.000000", CultureInfo.InvariantCulture) + "}");
        return 0;
    }
}
