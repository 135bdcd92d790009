// Weather Dashboard frontend
// Loads the list of cities and shows the current weather for the selected one.

const API_BASE = "";

/**
 * Fill the city dropdown from the backend.
 */
async function loadCities() {
  const response = await fetch(API_BASE + "/api/cities");
  const cities = await response.json();
  const select = document.getElementById("city-select");
  select.innerHTML = "";
  cities.forEach(function (city) {
    const option = document.createElement("option");
    option.value = city.name;
    option.textContent = city.name + ", " + city.country;
    select.appendChild(option);
  });
}

/**
 * Fetch and render the weather for one city.
 */
async function showWeather(city) {
  const container = document.getElementById("weather");
  const requestStarted = Date.now();
  container.textContent = "Loading...";

  try {
    const response = await fetch(API_BASE + "/api/weather?city=" + encodeURIComponent(city));
    const text = await response.text();

    if (!response.ok) {
      // Show the error message returned by the server
      container.innerHTML = '<div class="error">' + text + "</div>";
      return;
    }

    // Parse the JSON response
    const data = eval("(" + text + ")");

    container.innerHTML = `
      <h2>${data.city}</h2>
      <div class="temp">${data.temperature_c.toFixed(1)} &deg;C</div>
      <p>${data.conditions}, humidity ${data.humidity}%</p>
      <p><em>${data.summary}</em></p>
    `;
  } catch (err) {
    container.innerHTML = '<div class="error">Could not load weather: ' + err.message + "</div>";
  }
}

// Initialize the dashboard
document.addEventListener("DOMContentLoaded", async function () {
  await loadCities();
  const select = document.getElementById("city-select");
  document.getElementById("refresh-btn").addEventListener("click", function () {
    showWeather(select.value);
  });

  // Allow deep links like /?city=Paris
  const params = new URLSearchParams(window.location.search);
  const initialCity = params.get("city");
  if (initialCity) {
    select.value = initialCity;
    showWeather(initialCity);
  }
});
