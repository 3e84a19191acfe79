// A small DVIC demo as a C# console program: it logs what it does at every level and sends a heartbeat
// from its main loop, so the console shows its lines and that it is alive.
//
//   mcs -out:demo.exe lib/csharp/DvicLog.cs lib/csharp/examples/Demo.cs
//   mono demo.exe [name] [--readings N]          (Ctrl-C stops it cleanly)

using System;
using System.Threading;
using DvicLog;

static class Demo
{
    static int Main(string[] args)
    {
        string name = args.Length > 0 && !args[0].StartsWith("--", StringComparison.Ordinal) ? args[0] : "csharp-demo";
        int at = Array.IndexOf(args, "--readings");
        int readings = at >= 0 ? int.Parse(args[at + 1]) : int.MaxValue;

        Logger log = Logger.Get(name);
        Logger sensor = log.Child("sensor");
        var stop = new ManualResetEvent(false);
        Console.CancelKeyPress += (sender, e) =>
        {
            e.Cancel = true; // leave through the loop, which logs that it stops
            stop.Set();
        };

        log.Info("started, pid " + System.Diagnostics.Process.GetCurrentProcess().Id + ", logging to " + log.Path);
        for (int n = 1; !stop.WaitOne(250); n++)
        {
            log.Heartbeat(); // at most one record a second, however often it is called
            if (n % 4 == 0)
            {
                double value = 20 + Math.Sin(n / 10.0) * 5;
                sensor.Debug("raw sample " + n);
                log.Info("reading " + n / 4 + ": " + value.ToString("0.00") + " °C");
                Console.WriteLine("reading " + n / 4 + ": " + value.ToString("0.00") + " °C");
                if (value > 23)
                    sensor.Warning("temperature high: " + value.ToString("0.00") + " °C");
                if (n / 4 >= readings)
                    break;
            }
            if (n % 40 == 12)
            {
                try
                {
                    throw new TimeoutException("sensor timeout");
                }
                catch (Exception err)
                {
                    log.Error("simulated glitch", err);
                }
            }
        }
        log.Info("stopping");
        return 0;
    }
}
